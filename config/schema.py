"""The configuration schema.

Every field is validated when the file is read, so a mistake is reported with
its path (``peers[1].ae_title: more than 16 characters``) before the node
starts or before a hot reload replaces a working configuration.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Final, Literal

from argon2 import Type, extract_parameters
from argon2.exceptions import InvalidHashError
from cryptography import x509
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from config.certificates import (
    CertificateError,
    FileChecks,
    check_certificates,
    check_private_key,
    key_matches,
    read_certificates,
)
from config.research_key import ResearchKeyError, read_research_key
from dicomio.codes import STRUCTURE_CODES


def _check_ae_title(value: str) -> str:
    """Validate an Application Entity title (PS3.5 table 6.2-1, VR AE).

    At most 16 characters of the default repertoire, no backslash and no
    control characters; leading and trailing spaces are not significant and
    are removed, which leaves at least one character.
    """
    if len(value) > 16:
        raise PydanticCustomError("ae_title", "more than 16 characters")
    if "\\" in value:
        raise PydanticCustomError("ae_title", "contains a backslash")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise PydanticCustomError("ae_title", "contains a control character")
    if not value.isascii():
        raise PydanticCustomError("ae_title", "contains a character outside ASCII")
    stripped = value.strip(" ")
    if not stripped:
        raise PydanticCustomError("ae_title", "is empty")
    return stripped


AETitle = Annotated[str, AfterValidator(_check_ae_title)]
Port = Annotated[int, Field(ge=1, le=65535)]

_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _check_host(value: str) -> str:
    """An IP address, or a host name of labels of letters, digits, hyphens
    (and the underscores some sites' internal names carry), each at most 63
    characters, at most 253 in all (RFC 1123 2.1): anything else would only
    fail later, in the resolver, as a peer that never matches or a
    destination that is never reached."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    name = value[:-1] if value.endswith(".") else value
    if not name or len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in name.split(".")):
        raise PydanticCustomError(
            "host", "not an IP address or a host name (letters, digits and hyphens, at most 253 characters)"
        )
    return value


HostName = Annotated[str, AfterValidator(_check_host)]

#: Environment variable naming the model store where the configuration names none
#: (the container image sets it; ``segnode models`` without ``--store`` reads it).
MODELS_ENV: Final = "SEGNODE_MODELS"


def default_models_dir() -> Path:
    """``$SEGNODE_MODELS``, else ``~/.local/share/segnode/models``.

    The one default of the model store, for ``node.models_dir`` and for the
    ``segnode models``, ``segment`` and ``run-series`` commands alike, so that a
    model installed without ``--store`` is where a node without ``models_dir``
    looks for it.
    """
    configured = os.environ.get(MODELS_ENV)
    if configured:
        return Path(configured).expanduser()
    # Not Path.home(): a service user without a home must still load its configuration.
    return Path(os.path.expanduser("~/.local/share/segnode/models"))


class _Strict(BaseModel):
    """Unknown keys are errors: a misspelt key must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_sha256(value: str) -> str:
    """A SHA-256 fingerprint as 64 hex digits, colons allowed (as openssl prints them)."""
    digits = value.replace(":", "").lower()
    if len(digits) != 64 or any(ch not in "0123456789abcdef" for ch in digits):
        raise PydanticCustomError("sha256", "not a SHA-256 fingerprint (64 hexadecimal digits)")
    return digits


Sha256 = Annotated[str, AfterValidator(_check_sha256)]


def _check_subject(value: str) -> str:
    """A distinguished name as RFC 4514 writes it, e.g. ``CN=ct1.example.org,O=Hospital``."""
    try:
        name = x509.Name.from_rfc4514_string(value)
    except ValueError:
        raise PydanticCustomError(
            "subject", "not an RFC 4514 name such as CN=ct1.example.org,O=Hospital"
        ) from None
    if not len(name):
        raise PydanticCustomError("subject", "is empty")
    return value


def _checks_files(info: ValidationInfo) -> bool:
    return not isinstance(info.context, FileChecks) or info.context.enabled


def _certificates_checked(path: Path, info: ValidationInfo) -> Path:
    """A certificate field's file, read and valid now (unless the loader reads shape only)."""
    if _checks_files(info):
        try:
            check_certificates(path, datetime.datetime.now(datetime.timezone.utc))
        except CertificateError as exc:
            raise PydanticCustomError("certificate_file", "{problem}", {"problem": str(exc)}) from None
    return path


def _key_checked(path: Path, info: ValidationInfo) -> Path:
    """A key field's file, readable and the private half of the ``certificate``
    beside it. Validated after ``certificate`` (the field order), which is thus
    in ``info.data`` unless it failed its own check; the loader names it in the
    message of a ``key_mismatch``."""
    if not _checks_files(info):
        return path
    try:
        key = check_private_key(path)
        certificate = info.data.get("certificate")
        if certificate is not None and not key_matches(key, read_certificates(certificate)[0]):
            raise PydanticCustomError("key_mismatch", "does not match the certificate")
    except CertificateError as exc:
        raise PydanticCustomError("key_file", "{problem}", {"problem": str(exc)}) from None
    return path


class NodeTls(_Strict):
    """DICOM TLS on its own port (PS3.15 annex B.9, BCP 195): the node's
    certificate and key, and the CAs that a client's certificate must chain
    to. Every client presents one."""

    port: Port = 2762
    # PEM: the node's certificate, then the chain up to (not including) the CA.
    certificate: Path
    # PEM, unencrypted; readable by the service user only.
    key: Path
    # PEM: the CA certificates client certificates must chain to.
    client_ca: Path

    @field_validator("certificate", "client_ca")
    @classmethod
    def _valid_certificates(cls, path: Path, info: ValidationInfo) -> Path:
        return _certificates_checked(path, info)

    @field_validator("key")
    @classmethod
    def _usable_key(cls, path: Path, info: ValidationInfo) -> Path:
        return _key_checked(path, info)


_USER_NAME: Final = re.compile(r"[A-Za-z0-9._@-]{1,64}")


def _check_user_name(value: str) -> str:
    """A console user's name: what an audit line and a log-in form show as typed,
    so only letters, digits and ``._@-`` (an e-mail address fits)."""
    if not _USER_NAME.fullmatch(value):
        raise PydanticCustomError("user_name", "not 1 to 64 of the characters A-Z a-z 0-9 . _ @ -")
    return value


UserName = Annotated[str, AfterValidator(_check_user_name)]


def _check_password_hash(value: str) -> str:
    """An argon2id hash in its PHC string form, as ``segnode console add-user``
    writes it: a plain password or another scheme pasted here must not become
    one that signs in."""
    try:
        parameters = extract_parameters(value)
        usable = parameters.type is Type.ID and parameters.salt_len > 0 and parameters.hash_len > 0
    except InvalidHashError:
        usable = False
    if not usable:
        raise PydanticCustomError(
            "password_hash", "not an argon2id hash ($argon2id$...); make one with segnode console add-user"
        )
    return value


class ConsoleUser(_Strict):
    """Who may sign in to the web console; only the hash of the password is kept."""

    name: UserName
    password_hash: Annotated[str, AfterValidator(_check_password_hash)]


class NodeConsole(_Strict):
    """The administrator's web console, served by ``segnode serve`` beside the
    DICOM listener. It binds to the loopback address unless told otherwise,
    as it can change the configuration; HTTPS when ``certificate`` and
    ``private_key`` are given, for a console reached from other hosts."""

    host: HostName = "127.0.0.1"
    port: Port
    # How long a sign-in lasts, counted from signing in (the overview polls, so use never stops).
    session_minutes: int = Field(480, ge=5, le=10080)
    users: list[ConsoleUser] = []
    # PEM: the console's certificate, then its chain; the key unencrypted.
    certificate: Path | None = None
    private_key: Path | None = None

    @field_validator("users")
    @classmethod
    def _distinct_names(cls, users: list[ConsoleUser]) -> list[ConsoleUser]:
        names = [user.name for user in users]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise PydanticCustomError("repeated", "'{name}' is listed twice (users[{index}])",
                                          {"name": name, "index": index})
        return users

    @field_validator("certificate")
    @classmethod
    def _valid_certificate(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        return None if path is None else _certificates_checked(path, info)

    @field_validator("private_key")
    @classmethod
    def _usable_key(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        return None if path is None else _key_checked(path, info)

    @model_validator(mode="after")
    def _certificate_with_key(self) -> NodeConsole:
        if (self.certificate is None) != (self.private_key is None):
            raise PydanticCustomError("https", "certificate and private_key go together (HTTPS)")
        return self


class NodeSettings(_Strict):
    """The node's own identity, listening address, storage and timings."""

    ae_title: AETitle = "SEGNODE"
    host: HostName = "127.0.0.1"
    port: Port = 11112
    storage_dir: Path = Path("./var/segnode")
    # Where `segnode models install` put the models the pipelines name.
    models_dir: Annotated[Path, AfterValidator(Path.expanduser)] = Field(default_factory=default_models_dir)
    # A series is complete once quiet this long, unless an exact signal
    # (peers[].completion, MPPS) completes it first.
    series_stable_seconds: float = Field(10.0, gt=0)
    # After an association that brought a series is released, how long the
    # series waits for a sender that opens its next association at once.
    association_grace_seconds: float = Field(1.0, ge=0)
    # How long a series that a completed MPPS step lists, but that misses some
    # of its instances, waits after the later of the step's completion and its
    # last instance before it completes anyway (with a warning).
    mpps_wait_seconds: float = Field(300.0, gt=0)
    metrics_port: Port = 9102
    max_associations: int = Field(10, ge=1)
    # The largest PDU we accept. 256 KiB lets a sender put a 512x512 slice in
    # three PDUs instead of 34 at pynetdicom's 16 KiB default, which cut the
    # SCP's CPU per slice by a fifth (bench/ingest.py); 0 would let a peer
    # choose PDUs of any size.
    max_pdu_size: int = Field(262144, ge=4096)
    acse_timeout: float = Field(30.0, gt=0)
    dimse_timeout: float = Field(30.0, gt=0)
    network_timeout: float = Field(60.0, gt=0)
    # Connections that have not yet become an association (no valid
    # A-ASSOCIATE-RQ from a listed peer so far): they never count against
    # max_associations, and these bound what they can hold.
    max_pending_per_address: int = Field(4, ge=1)
    max_pending_connections: int = Field(64, ge=1)
    # The largest instance accepted, as sent and, for deflated data sets,
    # once inflated. Received data sets are spooled to disk, not memory.
    max_instance_bytes: int = Field(1 << 30, ge=1 << 20)
    tls: NodeTls | None = None
    # Listen on `port` without TLS too; false leaves only the TLS port.
    listen_plain: bool = True
    # None: no web console.
    console: NodeConsole | None = None

    @model_validator(mode="after")
    def _listens_somewhere(self) -> NodeSettings:
        if not self.listen_plain and self.tls is None:
            raise PydanticCustomError("listen", "listen_plain is false and there is no tls: "
                                      "nothing to listen on")
        if self.tls is not None and self.listen_plain and self.tls.port == self.port:
            raise PydanticCustomError("listen", "tls.port ({port}) is also the plain port",
                                      {"port": self.port})
        return self


class CertificateBinding(_Strict):
    """The client certificate a peer must present: its subject (an RFC 4514
    string such as ``CN=ct1.example.org,O=Hospital``) or its SHA-256
    fingerprint, one of the two."""

    subject: Annotated[str, AfterValidator(_check_subject)] | None = None
    sha256: Sha256 | None = None

    @model_validator(mode="after")
    def _one_of_two(self) -> CertificateBinding:
        if (self.subject is None) == (self.sha256 is None):
            raise PydanticCustomError("certificate", "give either subject or sha256")
        return self


class Peer(_Strict):
    """A calling AE that may send to this node, optionally only from one host,
    only over TLS, or only with one client certificate (which implies TLS)."""

    ae_title: AETitle
    host: HostName | None = None
    tls: Literal["optional", "required"] = "optional"
    certificate: CertificateBinding | None = None
    # What tells that a series it sends is complete: the stable period, or
    # the normal release of the association that brought it (an abort falls
    # back to the stable period). MPPS, when the peer sends it, applies to all.
    completion: Literal["stable", "association"] = "stable"

    @property
    def requires_tls(self) -> bool:
        return self.tls == "required" or self.certificate is not None


class DestinationTls(_Strict):
    """DICOM TLS to a destination. Its certificate is verified against
    ``ca`` (the system's CAs when absent) and must name ``host``, or be the
    one pinned by ``sha256``; ``verify_hostname: false`` with no pin accepts
    any certificate the CA signed, and is logged at start. ``certificate``
    and ``key`` are this node's client certificate, for destinations that
    ask for one."""

    ca: Path | None = None
    certificate: Path | None = None
    key: Path | None = None
    verify_hostname: bool = True
    sha256: Sha256 | None = None

    @field_validator("ca", "certificate")
    @classmethod
    def _valid_certificates(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        return None if path is None else _certificates_checked(path, info)

    @field_validator("key")
    @classmethod
    def _usable_key(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        return None if path is None else _key_checked(path, info)

    @model_validator(mode="after")
    def _certificate_with_key(self) -> DestinationTls:
        if (self.certificate is None) != (self.key is None):
            raise PydanticCustomError("tls", "certificate and key go together")
        return self


#: What a job can send: DICOM-SEG, the TID 1500 SR, the PDF report
#: (Encapsulated PDF), overlay images (Secondary Capture) and RTSTRUCT.
OutputKind = Literal["seg", "sr", "pdf", "overlay", "rtstruct"]


def _distinct(kinds: list[str]) -> list[str]:
    repeated = sorted({kind for kind in kinds if kinds.count(kind) > 1})
    if repeated:
        raise PydanticCustomError("repeated", "lists {kinds} more than once", {"kinds": ", ".join(repeated)})
    return kinds


class Destination(_Strict):
    """A C-STORE SCP that results are sent to, and which results it gets.

    SEG and SR by default: what viewers (OHIF, Slicer) open. A PACS that
    shows only images and documents takes ``pdf`` and ``overlay``, a
    planning system ``rtstruct``. ``seg_format`` picks BINARY (one frame per
    segment and slice, what every viewer reads), LABELMAP (one frame per
    slice, Supplement 243, far smaller and faster) or both.
    """

    ae_title: AETitle
    host: HostName
    port: Port
    tls: DestinationTls | None = None
    outputs: Annotated[list[OutputKind], AfterValidator(_distinct)] = Field(
        default_factory=lambda: ["seg", "sr"], min_length=1
    )
    seg_format: Literal["binary", "labelmap", "both"] = "binary"


class RouteMatch(_Strict):
    """What a completed series must look like for a route to apply.

    Every given field must match; patterns are shell-style (``*``, ``?``,
    ``[...]``) and compared without regard to case, as scanners spell
    descriptions as they please. An absent field matches anything.
    """

    calling_ae: str | None = None
    called_ae: str | None = None
    modality: str | None = None
    series_description: str | None = None
    body_part_examined: str | None = None


class RouteResearch(_Strict):
    """A de-identified copy of a route's source series and results, for research
    (PS3.15 annex E, Basic Application Level Confidentiality Profile).

    ``dates``: ``removed`` is the Basic Profile alone; ``full`` and
    ``modified`` are its Retain Longitudinal Temporal Information option, with
    full dates (113106) or dates shifted by a per-patient offset (113107).
    ``clean_descriptors`` is the Clean Descriptors option (113105): free-text
    descriptions are kept, cleaned, instead of removed.
    """

    destination: str = Field(min_length=1)
    dates: Literal["full", "modified", "removed"] = "removed"
    clean_descriptors: bool = False


class Route(_Strict):
    """Which pipeline a matching series goes through and where results go."""

    name: str = Field(min_length=1)
    match: RouteMatch = RouteMatch()
    pipeline: str = Field(min_length=1)
    send_to: list[str] = Field(min_length=1)
    research: RouteResearch | None = None


def _research_key_checked(path: Path, info: ValidationInfo) -> Path:
    """The key file, readable, long enough and private now (unless the loader
    reads shape only); the secret itself is not kept."""
    if _checks_files(info):
        try:
            read_research_key(path)
        except ResearchKeyError as exc:
            raise PydanticCustomError("key_file", "{problem}", {"problem": str(exc)}) from None
    return path


class ResearchSettings(_Strict):
    """What every route's research export shares: the secret that keys its
    pseudonyms, UIDs and date shifts, so that one patient gets one pseudonym
    across studies and processes. Only its path is in the configuration."""

    # At least 32 bytes, not readable by every user (chmod 600 or 640).
    key_file: Path

    @field_validator("key_file")
    @classmethod
    def _usable_key(cls, path: Path, info: ValidationInfo) -> Path:
        return _research_key_checked(path, info)


class QaSettings(_Strict):
    """Which quality checks a pipeline runs besides Dice against a reference
    SEG (always computed when someone else sends one)."""

    plausibility: bool = True
    # A second network pass on the mirrored image: doubles inference time,
    # and only models trained with mirroring allow it.
    mirror_consistency: bool = False


def _structure_name(name: str) -> str:
    if name not in STRUCTURE_CODES:
        raise PydanticCustomError("structure", "unknown structure {name} (dicomio/codes.py names them)",
                                  {"name": repr(name[:80])})
    return name


StructureName = Annotated[str, AfterValidator(_structure_name)]


class PipelineDosimetry(_Strict):
    """Organ dosimetry of radionuclide therapy from quantitative SPECT/CT time points.

    An NM series on a route of this pipeline is a time point: its organs are
    read from the SPECT with the masks of its CT (a physician's SEG of that
    CT where one was sent, else the pipeline's model), and the course (one
    patient, one administration) is evaluated once ``time_points`` have been
    read, and again at each later one. ``neighbours`` are organs modelled in
    the recovery correction but not reported: the hot ones beside the
    ``organs`` (spleen and liver beside the kidneys), whose counts would
    otherwise be read as the organs' own. ``sigma_mm`` extends each organ's
    mask for the SPECT's resolution (3 mm where not named; seeds/002), and
    ``fit`` chooses its time-activity model ("auto": by AICc).
    ``spect_fwhm_mm`` is the SPECT's resolution as the site measured it.
    """

    organs: list[StructureName] = Field(["kidney_left", "kidney_right"], min_length=1)
    neighbours: list[StructureName] = []
    # Two points fit a mono-exponential or a trapezoid; four, a bi-exponential (EANM 2022).
    time_points: int = Field(4, ge=2, le=20)
    sigma_mm: dict[StructureName, Annotated[float, Field(ge=0, le=20)]] = {}
    fit: dict[StructureName, Literal["auto", "mono", "bi", "trapezoid"]] = {}
    spect_fwhm_mm: float = Field(10.0, gt=0, le=50)

    @model_validator(mode="after")
    def _distinct(self) -> PipelineDosimetry:
        named = [*self.organs, *self.neighbours]
        repeated = sorted({name for name in named if named.count(name) > 1})
        if repeated:
            raise PydanticCustomError("structure", "{names} named twice among organs and neighbours",
                                      {"names": ", ".join(repeated)})
        return self


class Pipeline(_Strict):
    """What is done to a routed series: the model and the measurements, and
    for the SPECT of radionuclide therapy, the dosimetry."""

    model: str = Field("builtin", min_length=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # g/ml by structure name, over inference/quantify.py's tissue defaults.
    densities: dict[str, Annotated[float, Field(gt=0)]] = {}
    qa: QaSettings = QaSettings()
    dosimetry: PipelineDosimetry | None = None


def _broker_url(url: str) -> str:
    if not re.fullmatch(r"(redis|rediss|amqp|amqps|pyamqp)://[^\s\x00-\x1f\x7f]+", url):
        raise PydanticCustomError(
            "broker_url", "not a redis://, rediss://, amqp:// or amqps:// URL without spaces or control "
            "characters"
        )
    return url


BrokerUrl = Annotated[str, StringConstraints(max_length=1000), AfterValidator(_broker_url)]


class CelerySettings(_Strict):
    """Jobs through Celery (``jobs.backend: celery``), for workers on other hosts.

    ``broker_url`` is the broker's (Redis; RabbitMQ by an amqp:// URL), and
    ``result_backend`` where workers leave what they made (the broker's URL
    when it is Redis). A job's message stays unacknowledged until its job is
    done (late acknowledgement): a worker that dies leaves it to another,
    the broker redelivering it after ``visibility_timeout_seconds``, which
    must exceed the longest job (Redis's setting; RabbitMQ gives the message
    back when the worker's connection closes, and its own ``consumer_timeout``
    must exceed the longest job). ``queue`` is the queue the node sends to
    and its workers take from.
    """

    broker_url: BrokerUrl = "redis://127.0.0.1:6379/0"
    result_backend: BrokerUrl | None = None
    queue: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "segnode"
    visibility_timeout_seconds: float = Field(7200.0, gt=0)


class JobSettings(_Strict):
    """How jobs run, and retries of failed jobs: waits double from the base up
    to the maximum. ``backend`` is ``embedded`` (the node's own worker
    processes, jobs in its SQLite index) or ``celery`` (workers anywhere,
    ``segnode worker`` on each host; the index stays the jobs' record)."""

    max_attempts: int = Field(3, ge=1)
    retry_base_seconds: float = Field(30.0, gt=0)
    retry_max_seconds: float = Field(1800.0, gt=0)
    backend: Literal["embedded", "celery"] = "embedded"
    celery: CelerySettings = CelerySettings()

    @model_validator(mode="after")
    def _results_somewhere(self) -> JobSettings:
        celery = self.celery
        if celery.result_backend is None and not celery.broker_url.startswith(("redis", "rediss")):
            raise PydanticCustomError("result_backend",
                                      "celery.result_backend must be set for an amqp broker")
        return self


class WorkerSettings(_Strict):
    """A worker host's own (``segnode worker``): where its health and metrics
    are served, and on which devices it runs one worker process each
    ("auto": each GPU PyTorch sees, else one on the CPU)."""

    metrics_host: HostName = "127.0.0.1"
    metrics_port: Port = 9110
    devices: Literal["auto"] | list[Annotated[str, StringConstraints(pattern=r"^(cpu|cuda:[0-9]{1,2})$")]] = (
        "auto"
    )


class SendingSettings(_Strict):
    """Delivery of results from the outbox.

    A destination that is down is retried forever, waits doubling from the
    base up to the maximum (so results arrive at most that long after it is
    back); a file it refuses outright is given up after ``max_refusals``.
    ``timeout_seconds`` is how long a destination may stay silent before the
    association is dropped and the file retried.
    """

    timeout_seconds: float = Field(10.0, gt=0)
    retry_base_seconds: float = Field(5.0, gt=0)
    retry_max_seconds: float = Field(60.0, gt=0)
    max_refusals: int = Field(10, ge=1)


class RetentionSettings(_Strict):
    """How long stored files are kept once nothing needs them any more.

    A study's instances are kept ``instances_hours`` from the moment its last
    job finished and its last result was delivered (or given up on), or from
    its last instance when no route applied; while one of its jobs has
    failed, ``failed_hours`` from that failure, so that ``segnode jobs
    retry`` still finds its inputs. A job's results are kept
    ``results_hours`` after the last of them was delivered (or given up on),
    a failed job's ``failed_hours`` after the failure. An MPPS step goes
    ``instances_hours`` after it ended, ``failed_hours`` after its last
    update while in progress (node/retention/steps.py). Nothing that a queued
    or running job, or a result not yet delivered, needs is ever removed.
    """

    instances_hours: float = Field(72.0, ge=0)
    results_hours: float = Field(720.0, ge=0)
    failed_hours: float = Field(336.0, ge=0)

    @model_validator(mode="after")
    def _failed_outlasts_instances(self) -> RetentionSettings:
        if self.failed_hours < self.instances_hours:
            raise PydanticCustomError(
                "retention",
                "failed_hours ({failed}) must be at least instances_hours ({instances}): a failed "
                "job keeps its inputs longer than a finished one",
                {"failed": self.failed_hours, "instances": self.instances_hours},
            )
        return self


class StorageSettings(_Strict):
    """Retention, and the free space that incoming instances may not use.

    Below ``low_watermark_bytes`` free on the storage file system, new
    associations are rejected as transient, C-STOREs are answered "out of
    resources" and retention removes what it may, oldest first, early. The
    space under the watermark is thus left to results: a running job never
    fails for want of space, as long as the watermark exceeds what the jobs
    running at once write (tens of MB per CT) plus about one second of
    incoming instances (free space is measured once a second).
    """

    retention: RetentionSettings = RetentionSettings()
    low_watermark_bytes: int = Field(10 << 30, gt=0)


class ReportSettings(_Strict):
    """What the human-readable outputs say and show.

    ``disclaimer`` is printed on every PDF report; the default says what a
    site must decide before results are read clinically.
    ``overlay_every`` makes an overlay image of every Nth source slice.
    """

    disclaimer: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)] = (
        "Automatic segmentation and measurements, not reviewed by a physician. "
        "Check them against the images before any clinical use."
    )
    overlay_every: int = Field(1, ge=1)


class SegnodeConfig(_Strict):
    """The whole configuration file."""

    # A factory, not one instance made at import: models_dir's default reads the environment.
    node: NodeSettings = Field(default_factory=NodeSettings)
    peers: list[Peer] = []
    destinations: dict[str, Destination] = {}
    pipelines: dict[str, Pipeline] = {}
    routes: list[Route] = []
    jobs: JobSettings = JobSettings()
    worker: WorkerSettings = WorkerSettings()
    sending: SendingSettings = SendingSettings()
    storage: StorageSettings = StorageSettings()
    research: ResearchSettings | None = None
    reports: ReportSettings = ReportSettings()

    @model_validator(mode="after")
    def _check_references(self) -> SegnodeConfig:
        # (field, message) pairs: the loader reports each beside its own field.
        errors: list[tuple[str, str]] = []
        for index, route in enumerate(self.routes):
            if route.pipeline not in self.pipelines:
                errors.append((f"routes[{index}].pipeline", f"unknown pipeline {route.pipeline!r}"))
            for name in route.send_to:
                if name not in self.destinations:
                    errors.append((f"routes[{index}].send_to", f"unknown destination {name!r}"))
            if route.research is not None:
                if route.research.destination not in self.destinations:
                    errors.append((f"routes[{index}].research.destination",
                                   f"unknown destination {route.research.destination!r}"))
                if self.research is None:
                    errors.append((f"routes[{index}].research", "needs research.key_file, the "
                                   "secret of its pseudonyms, which is not set"))
        titles = [peer.ae_title for peer in self.peers]
        for index, title in enumerate(titles):
            if title in titles[:index]:
                errors.append((f"peers[{index}].ae_title", f"{title!r} is listed twice"))
        if errors:
            summary = "; ".join(f"{field}: {message}" for field, message in errors)
            raise PydanticCustomError("references", "{summary}", {"summary": summary, "problems": errors})
        return self
