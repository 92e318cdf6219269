"""Seeded fuzzing of a running ``segnode serve``: PDUs, data sets, MPPS steps.

test_hostile_peers.py pins down each misbehaviour we already know of; this
suite looks for the ones we don't. It sends 1,000 PDU-level inputs (random
bytes, truncated and oversize PDUs, wrong PDU types, data before the
association, A-ABORT floods, A-RELEASE at odd times, mutations of a valid
C-STORE exchange, slow and silent peers) and 1,000 C-STOREs of data sets
mutated from real slices (byte flips, insertions, deletions, truncations and
length fields; wrong VR values, odd binary lengths, undefined and huge
lengths, nested sequences, invalid UIDs, Modality garbage, Pixel Data that
does not match its attributes), in batches of 100; then the same PDU-level
inputs again inside TLS sessions on the DICOM TLS port, each after a good
handshake with a listed peer's certificate; and 300 MPPS inputs: N-CREATEs
and N-SETs mutated from a scanner's (the same data set mutations, and wrong
step statuses, relied-on attributes in other VRs, Scheduled Step Attributes
and Performed Series Sequences of thousands of items or of bad references,
attributes an N-SET may not change, command elements in the data set, data
sets at the transport's bound; N-SETs on unknown and ended steps,
N-CREATEs of existing ones; now and then a mutated command). After every batch:

(a) a listed peer (dcmtk storescu, over TLS in the TLS run) still stores a slice;
(b) the node's RSS, sampled every 50 ms, stayed under ``RSS_GROWTH_BOUND``
    above its RSS after start;
(c) every instance the node acknowledged is in the store, and every stored
    instance reads as the pipeline reads it (``dcmread``, every value, then
    ``pixel_array``);
(d) the node is alive and its log has no traceback;

and after an MPPS batch, also: every step file reads back and is the one the
index names, every acknowledged step is kept, nothing is left in the spool,
and a scanner's step (N-CREATE, N-SET COMPLETED, then its images) completes
its series by MPPS;

and every input was answered (a status, an A-ASSOCIATE-RJ, an A-ABORT or a
close) within ``ANSWER_SECONDS`` of its last byte.

Every input is a pure function of the seed and its index (``pdu_input``,
``dataset_input``, ``step_input``), so a failure, which names both, replays with
``SEGNODE_FUZZ_SEED=<seed> python -m pytest -m fuzz tests/test_fuzz.py``.
The suite is marked ``fuzz`` and left out of the default run
(pyproject.toml); ``.ci/run`` runs it as its own stage.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import random
import re
import select
import ssl
import struct
import subprocess
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import DicomDictionary, dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom.dsutils import encode

from node.receive.index import InstanceIndex
from node.receive.transport import STEP_DATASET_BOUND
from tests.conftest import SHARED_DATA, rss_bytes
from tests.raw_peer import (
    ABORT,
    ASSOCIATE_AC,
    P_DATA_TF,
    RELEASE_RP,
    VERIFICATION,
    Drained,
    Pdu,
    RawPeer,
    abort,
    associate_rq,
    c_echo_rq,
    c_store_rq,
    command_set,
    decode_command,
    p_data,
    pdu,
    release_rq,
    store_pdus,
)
from tests.synthetic import dataset_bytes, write_ct_series
from tests.test_hostile_peers import Pki, start_tls_node, storescu_tls
from tests.test_mpps import Scanner, completed
from tests.test_mpps_protocol import scanner_create, scanner_set
from tests.test_receive import storescu

pytestmark = pytest.mark.fuzz

SEED = int(os.environ.get("SEGNODE_FUZZ_SEED", "7433"))
BATCHES = 10
BATCH_SIZE = 100

#: Small timers, so that slow and silent peers cost a second or two each.
NODE_SETTINGS = {
    "acse_timeout": 1.0,
    "network_timeout": 1.5,
    "dimse_timeout": 2.0,
    "max_associations": 32,
    # Every fuzz connection comes from 127.0.0.1, up to PDU_THREADS at once.
    "max_pending_per_address": 32,
    "max_pending_connections": 64,
}
#: The node's longest wait on a peer (network_timeout, then acse_timeout in
#: Sta13 after its A-ABORT), with room for a 2-core machine that also runs
#: the peers and the checks. The slowest answer seen was about 2.6 s.
ANSWER_SECONDS = 8.0
PDU_THREADS = 16
#: Associations sending mutated data sets at once, each reused until the node ends it.
STORE_LANES = 4
#: Peak VmRSS of the node process (its worker process excluded: it never
#: sees an input) over its VmRSS right after start (about 382 MiB). Measured
#: with seed 7433 on the 2-core development machine, sampled every 50 ms:
#: at most +32 MiB in the PDU run (16 connections at once) and +22 MiB in
#: the data set run (Siemens JPEG 2000 slices included, four lanes at once),
#: flat over the last batches of each. The bound leaves room for allocator
#: noise and fails on a leak of more than ~100 KiB per input.
RSS_GROWTH_BOUND = 128 << 20

CT = "1.2.840.10008.5.1.4.1.1.2"
#: Proposed in every association, ids 1, 3, 5 and 7 (raw_peer.associate_rq).
CONTEXTS = (
    (CT, (ExplicitVRLittleEndian,)),
    (CT, (ImplicitVRLittleEndian,)),
    (CT, (JPEG2000Lossless,)),
    (VERIFICATION, (ImplicitVRLittleEndian,)),
)
CONTEXT_OF = {ExplicitVRLittleEndian: 1, ImplicitVRLittleEndian: 3, JPEG2000Lossless: 5}
SIEMENS = SHARED_DATA / "ct-abdomen-siemens" / "dicom"


def replay_note(kind: str) -> str:
    return (f"fuzz seed {SEED}, {kind}: replay with SEGNODE_FUZZ_SEED={SEED} "
            ".venv/bin/python -m pytest -q -m fuzz tests/test_fuzz.py; the inputs named above are "
            "pdu_input(seed, index, base), dataset_input(bases, seed, index) and step_input(seed, index)")


@contextlib.contextmanager
def replayable(kind: str) -> Iterator[None]:
    """Any failure inside names the seed, so that it can be replayed."""
    try:
        yield
    except BaseException as exc:
        exc.add_note(replay_note(kind))
        raise


def rng_for(seed: int, kind: str, index: int) -> random.Random:
    """The generator of one input: the same (seed, kind, index), the same input."""
    return random.Random(f"{seed}/{kind}/{index}")


def uid_for(seed: int, kind: str, index: int) -> str:
    """A SOP Instance UID of one input, under 2.25 (PS3.5 section B.2)."""
    digest = hashlib.sha256(f"{seed}/{kind}/{index}".encode()).digest()
    return f"2.25.{int.from_bytes(digest[:15], 'big')}"


# ---------------------------------------------------------------------------
# PDU-level inputs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PduInput:
    """One connection's worth of bytes, each chunk sent after its pause."""

    index: int
    kind: str
    detail: str
    #: (pause before, bytes, whether to read the node's answer before going on)
    chunks: tuple[tuple[float, bytes, bool], ...]
    #: SOP Instance UID of the C-STORE the bytes may carry.
    uid: str

    def __str__(self) -> str:
        size = sum(len(data) for _, data, _ in self.chunks)
        return f"PDU input {self.index} ({self.kind}: {self.detail}; {size} bytes)"


def _associate(rng: random.Random) -> bytes:
    return associate_rq("TESTSCU", contexts=CONTEXTS, max_pdu=rng.choice((0, 4096, 16384, 1 << 20)))


def _at_once(data: bytes) -> tuple[tuple[float, bytes, bool], ...]:
    return ((0.0, data, False),)


def _associated(rng: random.Random, data: bytes, request: bytes | None = None) -> tuple:
    """An A-ASSOCIATE-RQ, then `data`: mostly after the node's answer, as
    PS3.8 requires (Sta5), sometimes at once, as a careless peer sends it."""
    request = _associate(rng) if request is None else request
    return ((0.0, request, rng.random() < 0.8), (0.0, data, False))


def _random_bytes(rng, uid, slice_data):
    data = rng.randbytes(rng.choice((1, 5, 6, 7, 64, 1000, 20000)))
    if rng.random() < 0.5:  # a known PDU type gets past the first check
        data = bytes([rng.randint(1, 7)]) + data[1:]
    return f"{len(data)} random bytes starting {data[:1].hex()}", _at_once(data)


def _random_p_data(rng, uid, slice_data):
    if rng.random() < 0.5:
        body = pdu(P_DATA_TF, rng.randbytes(rng.randint(0, 3000)))
        detail = "a P-DATA-TF of random bytes"
    else:
        control = rng.randint(0, 255)
        body = p_data((rng.choice((1, 3, 5, 7, 2, 9, 255)), control, rng.randbytes(rng.randint(0, 3000))))
        detail = f"a PDV of random bytes, control header {control:#04x}"
    return f"association, then {detail}", _associated(rng, body)


def _truncated_p_data(rng, uid, slice_data):
    whole = store_pdus(1, c_store_rq(CT, uid), slice_data, rng.choice((1024, 16384)))
    cut = rng.randint(1, len(whole) - 1)
    detail = f"association, then a C-STORE cut after {cut} of {len(whole)} bytes"
    return detail, _associated(rng, whole[:cut])


def _oversize_pdu(rng, uid, slice_data):
    pdu_type = rng.choice((0x01, 0x02, 0x04, 0x04, 0x05, 0x06, 0x07))
    length = rng.choice((262145, 1 << 24, 0x7FFFFFFF, 0xFFFFFFFF, rng.randint(262145, 0xFFFFFFFF)))
    associated = pdu_type != 0x01 and rng.random() < 0.7
    data = pdu(pdu_type, rng.randbytes(rng.randint(0, 4096)), length=length)
    chunks = _associated(rng, data) if associated else _at_once(data)
    return f"{'association, then ' * associated}PDU type {pdu_type:#04x} declaring {length}", chunks


def _wrong_pdu_type(rng, uid, slice_data):
    pdu_type = rng.choice((0x01, 0x02, 0x03, 0x06, 0x00, 0x08, 0x50, 0xFF, rng.randint(0x08, 0xFF)))
    body = rng.randbytes(rng.randint(0, 100))
    return f"association, then PDU type {pdu_type:#04x}", _associated(rng, pdu(pdu_type, body))


def _before_association(rng, uid, slice_data):
    first = rng.choice((
        ("a C-ECHO", p_data((1, 0x03, c_echo_rq()))),
        ("an A-RELEASE-RQ", release_rq()),
        ("an A-RELEASE-RP", pdu(RELEASE_RP, bytes(4))),
        ("an A-ABORT", abort()),
        ("an A-ASSOCIATE-AC", pdu(ASSOCIATE_AC, _associate(rng)[6:])),
        ("an A-ASSOCIATE-RJ", pdu(0x03, bytes([0, 1, 1, 1]))),
        ("a C-STORE", store_pdus(1, c_store_rq(CT, uid), slice_data)),
    ))
    then = _associate(rng) if rng.random() < 0.5 else b""
    return f"{first[0]} before the association{', then one' if then else ''}", _at_once(first[1] + then)


def _abort_flood(rng, uid, slice_data):
    count = rng.choice((1, 10, 200, 2000))
    associated = rng.random() < 0.7
    flood = abort() * count if rng.random() < 0.5 else b"".join(
        pdu(ABORT, bytes([0, 0, rng.randint(0, 2), rng.randint(0, 6)])) for _ in range(count))
    chunks = _associated(rng, flood) if associated else _at_once(flood)
    return f"{count} A-ABORTs{' in an association' if associated else ''}", chunks


def _odd_release(rng, uid, slice_data):
    store = store_pdus(1, c_store_rq(CT, uid), slice_data, 1024)
    variants = {
        "twice": release_rq() * 2,
        "then a C-STORE": release_rq() + store,
        "after the command, before the data set": p_data((1, 0x03, c_store_rq(CT, uid))) + release_rq(),
        "in the middle of the data set": store[: len(store) // 2] + release_rq(),
        "with a 100-byte body": pdu(0x05, rng.randbytes(100)),
        "then an A-ABORT": release_rq() + abort(),
    }
    name = rng.choice(sorted(variants))
    return f"association, then A-RELEASE-RQ {name}", _associated(rng, variants[name])


def _mutated_exchange(rng, uid, slice_data):
    request = _associate(rng)
    fragment = rng.choice((1024, 16384, 262138))
    data = bytearray(request + store_pdus(1, c_store_rq(CT, uid), slice_data, fragment) + release_rq())
    done = []
    for _ in range(rng.choice((1, 1, 2, 4))):
        how = rng.choice(("flip", "length", "truncate", "insert", "delete"))
        at = rng.randrange(len(data))
        if how == "flip":
            data[at] ^= 1 << rng.randrange(8)
        elif how == "length":  # a PDU or PDV length field, or any four bytes
            at = rng.choice((2, 6 + struct.unpack_from(">L", data, 2)[0] + 2, at))
            data[at : at + 4] = rng.choice((0, 1, 0xFFFFFFFF, rng.getrandbits(32))).to_bytes(4, "big")
        elif how == "truncate":
            del data[at:]
        elif how == "insert":
            data[at:at] = rng.randbytes(rng.randint(1, 64))
        else:
            del data[at : at + rng.randint(1, 64)]
        done.append(f"{how}@{at}")
        if not data:
            data = bytearray(b"\x01")
    # Split where the request ended before the mutations, wherever it ends now.
    chunks = _associated(rng, bytes(data[len(request) :]), bytes(data[: len(request)]))
    return "C-STORE exchange, " + ", ".join(done), chunks


def _slow_peer(rng, uid, slice_data):
    """A few bytes at a time: sometimes in time (a slow link), mostly not."""
    whole = _associate(rng) + p_data((7, 0x03, c_echo_rq())) + release_rq()
    size = rng.choice((1, 4, 16, 128))
    pause = rng.choice((0.02, 0.1, 0.3))
    chunks = tuple((pause, whole[start : start + size], False) for start in range(0, len(whole), size))[:12]
    return f"{size} bytes every {pause} s", chunks


def _silent_peer(rng, uid, slice_data):
    variants = {
        "nothing": b"",
        "an association, then nothing": _associate(rng),
        "half a command, then nothing": _associate(rng) + p_data((1, 0x03, c_store_rq(CT, uid)))[:20],
        "half a PDU header": _associate(rng)[:3],
    }
    name = rng.choice(sorted(variants))
    return name, _at_once(variants[name])


PDU_KINDS: dict[str, Callable] = {
    "random-bytes": _random_bytes,
    "random-p-data": _random_p_data,
    "truncated-p-data": _truncated_p_data,
    "oversize-pdu": _oversize_pdu,
    "wrong-pdu-type": _wrong_pdu_type,
    "before-association": _before_association,
    "abort-flood": _abort_flood,
    "odd-release": _odd_release,
    "mutated-exchange": _mutated_exchange,
    "slow-peer": _slow_peer,
    "silent-peer": _silent_peer,
}
#: Slow and silent peers cost seconds each; one input in twenty is one.
_PDU_WEIGHTS = {kind: (1 if kind in ("slow-peer", "silent-peer") else 2) for kind in PDU_KINDS}
# Mutated exchanges are the richest; they get a larger share.
_PDU_WEIGHTS["mutated-exchange"] = 6


def pdu_input(seed: int, index: int, base: Base) -> PduInput:
    """The `index`-th PDU-level input; a C-STORE in it carries `base` as instance `uid`."""
    rng = rng_for(seed, "pdu", index)
    kind = rng.choices(list(_PDU_WEIGHTS), weights=list(_PDU_WEIGHTS.values()))[0]
    uid = uid_for(seed, "pdu", index)
    detail, chunks = PDU_KINDS[kind](rng, uid, base.with_elements(uid))
    return PduInput(index, kind, detail, chunks, uid)


@dataclass(frozen=True)
class Answer:
    """How the node answered one input."""

    what: str  # "status 0xc000", "A-ABORT", "A-ASSOCIATE-RJ", "close", ... or "silence"
    seconds: float  # from the input's last byte
    acknowledged: bool = False


_PDU_NAMES = {0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ", 0x04: "P-DATA-TF", 0x06: "A-RELEASE-RP",
              0x07: "A-ABORT"}


def exchange(port: int, item: PduInput, tls: ssl.SSLContext | None) -> Answer:
    """Send one PDU-level input (inside a TLS session with `tls`) and wait
    for the node to end the connection."""
    received = []
    with RawPeer(port, tls=tls) as peer:
        peer.sock.settimeout(ANSWER_SECONDS)
        for pause, data, wait in item.chunks:
            time.sleep(pause)
            try:
                peer.send(data)
                if wait:
                    received.append(peer.read_pdu(timeout=ANSWER_SECONDS))
            except TimeoutError:
                return Answer("silence", ANSWER_SECONDS)
            except OSError:
                break  # the node closed first: that was its answer
            if wait and (received[-1] is None or received[-1].type != ASSOCIATE_AC):
                break
        sent = time.monotonic()
        drained: Drained = peer.drain(ANSWER_SECONDS)
    if drained.closed_after is None:
        return Answer("silence", time.monotonic() - sent)
    received += drained.pdus
    names = [_PDU_NAMES.get(p.type, f"PDU {p.type:#04x}") for p in received if p is not None]
    acknowledged = any(_status(p) in (0x0000,) for p in received if p is not None and p.type == P_DATA_TF)
    return Answer(" then ".join(names[-1:] + ["close"]), drained.closed_after, acknowledged)


def _status(answer: Pdu) -> int | None:
    try:
        return int(answer.command().Status)
    except Exception:  # not a whole command: not a status
        return None


# ---------------------------------------------------------------------------
# Data set inputs
# ---------------------------------------------------------------------------

#: VRs with a 4-byte length in explicit VR (PS3.5 section 7.1.2).
_LONG_VRS = frozenset(vr.encode() for vr in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR",
                                             "UT", "UV"))
_UNDEFINED = 0xFFFFFFFF
# Item and delimitation tags, PS3.5 section 7.5.
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_SOP_INSTANCE_UID = 0x00080018
_PIXEL_DATA = 0x7FE00010


def _header(data: bytes, offset: int, implicit: bool) -> tuple[int, int, int]:
    """(tag, length, header size) of the element at `offset` (PS3.5 section 7.1)."""
    group, number = struct.unpack_from("<HH", data, offset)
    if implicit or group == 0xFFFE:
        return group << 16 | number, struct.unpack_from("<L", data, offset + 4)[0], 8
    if bytes(data[offset + 4 : offset + 6]) in _LONG_VRS:
        return group << 16 | number, struct.unpack_from("<L", data, offset + 8)[0], 12
    return group << 16 | number, struct.unpack_from("<H", data, offset + 6)[0], 8


def _element_end(data: bytes, offset: int, implicit: bool) -> int:
    _, length, size = _header(data, offset, implicit)
    offset += size
    if length != _UNDEFINED:
        return offset + length
    while True:  # items up to the Sequence Delimitation Item
        tag, length, _ = _header(data, offset, True)
        offset += 8
        if tag == _SEQUENCE_END:
            return offset
        if length != _UNDEFINED:
            offset += length
            continue
        while _header(data, offset, implicit)[0] != _ITEM_END:
            offset = _element_end(data, offset, implicit)
        offset += 8


def _read_elements(data: bytes, implicit: bool) -> list[tuple[int, int, int]]:
    """(tag, start, end) of each top-level element of a well-formed data set."""
    elements, offset = [], 0
    while offset < len(data):
        end = _element_end(data, offset, implicit)
        elements.append((_header(data, offset, implicit)[0], offset, end))
        offset = end
    return elements


def element(tag: int, vr: str, value: bytes, implicit: bool, length: int | None = None) -> bytes:
    """One encoded element; `length` overrides the true one (to lie about it)."""
    length = len(value) if length is None else length
    group, number = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack("<HHL", group, number, length) + value
    if vr.encode() in _LONG_VRS:
        return struct.pack("<HH2sHL", group, number, vr.encode(), 0, length) + value
    return struct.pack("<HH2sH", group, number, vr.encode(), min(length, 0xFFFF)) + value


def _even(value: bytes, pad: bytes = b" ") -> bytes:
    return value + pad if len(value) % 2 else value


@dataclass(frozen=True)
class Base:
    """A real slice's data set, as sent in a C-STORE, split into its top-level elements."""

    name: str
    data: bytes
    implicit: bool
    context: int
    elements: tuple[tuple[int, int, int], ...]  # (tag, start, end)

    @classmethod
    def read(cls, name: str, path: Path) -> Base:
        syntax = str(pydicom.filereader.read_file_meta_info(path).TransferSyntaxUID)
        data, implicit = dataset_bytes(path), syntax == ImplicitVRLittleEndian
        return cls(name, data, implicit, CONTEXT_OF[syntax], tuple(_read_elements(data, implicit)))

    def raw(self, tag: int) -> bytes:
        return next(self.data[start:end] for t, start, end in self.elements if t == tag)

    def encode(self, tag: int, vr: str, value: bytes, length: int | None = None) -> bytes:
        return element(tag, vr, value, self.implicit, length)

    def with_elements(self, uid: str, *replaced: tuple[int, bytes], drop: tuple[int, ...] = ()) -> bytes:
        """The data set with SOP Instance UID `uid` and (tag, encoded element)s
        put in tag order, replacing those of the same tag."""
        parts = {tag: self.data[start:end] for tag, start, end in self.elements if tag not in drop}
        parts[_SOP_INSTANCE_UID] = self.encode(_SOP_INSTANCE_UID, "UI", _even(uid.encode(), b"\0"))
        parts.update(replaced)
        return b"".join(parts[tag] for tag in sorted(parts))


@dataclass(frozen=True)
class StoreInput:
    """One C-STORE: the command's SOP Instance UID, the data set bytes, the context."""

    index: int
    base: str
    kind: str
    detail: str
    uid: str
    data: bytes
    context: int
    fragment: int

    def __str__(self) -> str:
        return (f"data set input {self.index} ({self.base}, {self.kind}: {self.detail}; "
                f"{len(self.data)} bytes on context {self.context})")


def _tags_of_vr(vr: str) -> list[int]:
    return sorted(tag for tag, entry in DicomDictionary.items()
                  if entry[0] == vr and 0x0008 <= tag >> 16 < 0x7FE0 and entry[2] != "Retired")


_TAGS_BY_VR = {vr: _tags_of_vr(vr) for vr in ("US", "SS", "UL", "SL", "FL", "FD")}
_IMAGE_US = (0x00280010, 0x00280011, 0x00280100, 0x00280101, 0x00280102, 0x00280103, 0x00280002)


def _byte_level(rng: random.Random, base: Base, uid: str) -> tuple[str, bytes]:
    data = bytearray(base.with_elements(uid))
    elements = _read_elements(bytes(data), base.implicit)
    # Half in the attributes before Pixel Data, which are a small part of a slice (an MPPS step has none).
    pixel_start = next((start for tag, start, _ in elements if tag == _PIXEL_DATA), len(data))
    span = pixel_start if rng.random() < 0.5 else len(data)
    how = rng.choice(("flip", "insert", "delete", "truncate", "length"))
    at = rng.randrange(span)
    if how == "flip":
        flips = [(rng.randrange(span), rng.randrange(8)) for _ in range(rng.randint(1, 16))]
        for offset, bit in flips:
            data[offset] ^= 1 << bit
        return f"{len(flips)} bit flips from {flips[0][0]}", bytes(data)
    if how == "insert":
        count = rng.randint(1, 64)
        data[at:at] = rng.randbytes(count)
        return f"{count} random bytes inserted at {at}", bytes(data)
    if how == "delete":
        count = rng.randint(1, 64)
        del data[at : at + count]
        return f"{count} bytes deleted at {at}", bytes(data)
    if how == "truncate":
        return f"truncated to {at} bytes", bytes(data[:at])
    tag, start, _ = rng.choice(elements)
    _, old, size = _header(data, start, base.implicit)
    width = 2 if size == 8 and not base.implicit else 4
    new = rng.choice((0, 1, old + 1, max(old - 1, 0), old + 2, 0xFFFFFFFF, rng.getrandbits(32)))
    new %= 1 << 8 * width
    data[start + size - width : start + size] = new.to_bytes(width, "little")
    return f"length of {_tag(tag)} {old} -> {new}", bytes(data)


def _delimiter(tag: int, length: int = 0) -> bytes:
    """An item or delimitation item header (PS3.5 section 7.5)."""
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, length)


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _text(rng: random.Random, size: int) -> bytes:
    return bytes(rng.choice(b"0123456789.\\ -+eEabcXYZ\x00\xff\x1b") for _ in range(size))


def _wrong_vr_value(rng, base, uid):
    tag = rng.choice(_IMAGE_US)
    value = _text(rng, rng.randint(1, 9))
    vr = rng.choice(("US", "DS", "UN", "OB", "SQ"))
    data = base.with_elements(uid, (tag, base.encode(tag, vr, value)))
    return f"{_tag(tag)} as {vr} holding {value!r}", data


def _odd_binary_length(rng, base, uid):
    vr = rng.choice(sorted(_TAGS_BY_VR))
    tag = rng.choice(_TAGS_BY_VR[vr] + list(_IMAGE_US) * (vr == "US"))
    value = rng.randbytes(rng.choice((1, 3, 5, 7, 9, 13)))
    data = base.with_elements(uid, (tag, base.encode(tag, vr, value)))
    return f"{vr} {_tag(tag)} of {len(value)} bytes", data


def _undefined_length(rng, base, uid):
    tag = rng.choice((0x00081140, 0x00181030, 0x00291010, 0x00400275))  # an SQ, an LO, a private, an SQ
    vr = rng.choice(("UN", "OB", "UT", "SQ"))
    tail = rng.choice((b"", rng.randbytes(rng.randint(1, 40)),
                       _delimiter(_ITEM, _UNDEFINED) + rng.randbytes(16)))
    encoded = base.encode(tag, vr, tail, length=_UNDEFINED)
    return f"{vr} {_tag(tag)} of undefined length, {len(tail)} bytes, no delimiter", \
        base.with_elements(uid, (tag, encoded))


def _nested_sequences(rng, base, uid):
    depth = rng.choice((2, 10, 60, 65, 100, 300, rng.randint(1, 400)))
    defined = rng.random() < 0.5
    inner = base.encode(0x00081155, "UI", b"1.2.3\0")  # Referenced SOP Instance UID
    for _ in range(depth):
        if defined:
            item = _delimiter(_ITEM, len(inner)) + inner
            inner = base.encode(0x00081140, "SQ", item)
        else:
            item = _delimiter(_ITEM, _UNDEFINED) + inner + _delimiter(_ITEM_END)
            inner = base.encode(0x00081140, "SQ", item + _delimiter(_SEQUENCE_END), _UNDEFINED)
    lengths = "defined" if defined else "undefined"
    return f"{depth} nested sequences of {lengths} length", base.with_elements(uid, (0x00081140, inner))


def _huge_length(rng, base, uid):
    tag, vr = rng.choice(((0x00291010, "OB"), (0x00081030, "LO"), (0x00204000, "LT"), (0x7FE00010, "OW"),
                          (0x00400275, "SQ")))
    length = rng.choice((0x7FFFFFFF, 0xFFFFFFFE, 0x10000000, 0xFFFF, rng.randint(100, 0xFFFFFFF0)))
    encoded = base.encode(tag, vr, rng.randbytes(rng.randint(0, 64)), length=length)
    drop = (_PIXEL_DATA,) if tag == _PIXEL_DATA else ()
    return f"{vr} {_tag(tag)} declaring {length} bytes", base.with_elements(uid, (tag, encoded), drop=drop)


_BAD_UIDS = ("", "1..2", "1.02.3", "a.b.c", "1." + "1" * 70, "../../../etc/x", "1.2.3/4", "1.2\\3.4",
             "1.2.3 4", " 1.2", ".", "..", "1.2.", "\0\x01")
_UID_TAGS = {"SOPInstanceUID": 0x00080018, "StudyInstanceUID": 0x0020000D,
             "SeriesInstanceUID": 0x0020000E, "SOPClassUID": 0x00080016, "FrameOfReferenceUID": 0x00200052}


def _invalid_uid(rng, base, uid):
    keyword = rng.choice(sorted(_UID_TAGS))
    bad = rng.choice(_BAD_UIDS)
    tag = _UID_TAGS[keyword]
    data = base.with_elements(uid, (tag, base.encode(tag, "UI", _even(bad.encode(), b"\0"))))
    # The request names the same instance, unless the UID cannot even be sent in a command.
    command_uid = bad.strip(" \0") if tag == _SOP_INSTANCE_UID and bad.strip(" \0") else uid
    return f"{keyword} {bad!r}", data, command_uid


def _modality_garbage(rng, base, uid):
    value = rng.choice((b"", b"ct", b"CT\\PT", b"\xc3\xa9\xff", b"../..", rng.randbytes(rng.randint(1, 64)),
                        _text(rng, rng.choice((17, 1000, 20000)))))
    encoded = base.encode(0x00080060, "CS", value)
    data = base.with_elements(uid, (0x00080060, encoded))
    return f"Modality of {len(value)} bytes starting {value[:8]!r}", data


def _pixel_data(rng, base, uid):
    raw = base.raw(_PIXEL_DATA)
    _, length, size = _header(raw, 0, base.implicit)
    if length == _UNDEFINED:  # encapsulated (PS3.5 section A.4): items, then a delimiter
        body = bytearray(raw[size:])
        how = rng.choice(("truncate", "noise", "no-delimiter", "fragment-length"))
        if how == "truncate":
            cut = rng.randrange(8, len(body) - 8)
            body = body[:cut] + _delimiter(_SEQUENCE_END)
        elif how == "noise":
            for _ in range(rng.randint(1, 32)):
                body[rng.randrange(16, len(body) - 8)] = rng.getrandbits(8)
        elif how == "no-delimiter":
            body = body[:-8]
        else:
            at = body.find(struct.pack("<HH", 0xFFFE, 0xE000), 8)
            length = rng.choice((0, 1, 3, 0xFFFFFFFF, rng.getrandbits(32)))
            body[at + 4 : at + 8] = length.to_bytes(4, "little")
        encoded = raw[:size] + bytes(body)
        detail = f"encapsulated Pixel Data, {how}"
    else:
        how = rng.choice(("shorter", "longer", "odd", "empty", "rows"))
        value = raw[size:]
        if how == "shorter":
            value = value[: rng.randrange(len(value))]
        elif how == "longer":
            value += rng.randbytes(rng.choice((2, 64, len(value))))
        elif how == "odd":
            value = value[:-1]
        elif how == "empty":
            value = b""
        if how == "rows":
            rows = rng.choice((0, 1, 33, 512, 65535))
            return f"native Pixel Data, Rows {rows}", base.with_elements(
                uid, (0x00280010, base.encode(0x00280010, "US", struct.pack("<H", rows))))
        encoded = base.encode(_PIXEL_DATA, "OW", value)
        detail = f"native Pixel Data {how}: {len(value)} bytes"
    return detail, base.with_elements(uid, (_PIXEL_DATA, encoded))


def _image_attributes(rng, base, uid):
    keyword, tag, vr, value = rng.choice((
        ("BitsAllocated", 0x00280100, "US", struct.pack("<H", rng.choice((0, 1, 7, 12, 32, 64, 255))),),
        ("BitsStored", 0x00280101, "US", struct.pack("<H", rng.choice((0, 17, 32, 64)))),
        ("SamplesPerPixel", 0x00280002, "US", struct.pack("<H", rng.choice((0, 3, 4, 65535)))),
        ("PixelRepresentation", 0x00280103, "US", struct.pack("<H", rng.choice((2, 65535)))),
        ("PhotometricInterpretation", 0x00280004, "CS",
         rng.choice((b"RGB ", b"PALETTE COLOR ", b"", b"XYZ "))),
        ("NumberOfFrames", 0x00280008, "IS", rng.choice((b"0 ", b"-1", b"abc ", b"99999999", b"2 "))),
    ))
    return f"{keyword} {value!r}", base.with_elements(uid, (tag, base.encode(tag, vr, value)))


def _numbers_garbage(rng, base, uid):
    keyword, tag = rng.choice((("PixelSpacing", 0x00280030), ("ImagePositionPatient", 0x00200032),
                               ("ImageOrientationPatient", 0x00200037), ("RescaleSlope", 0x00281053),
                               ("RescaleIntercept", 0x00281052), ("SliceThickness", 0x00180050)))
    value = _even(rng.choice((b"abc", b"1\\2", b"nan\\inf\\1", b"1e999", b"", b"1" * 17, _text(rng, 9))))
    return f"{keyword} {value!r}", base.with_elements(uid, (tag, base.encode(tag, "DS", value)))


def _text_garbage(rng, base, uid):
    charset = rng.choice((b"ISO_IR 192", b"ISO 2022 IR 87", b"GARBAGE ", b"ISO_IR 100\\ISO_IR 6"))
    name = _even(rng.choice((b"\x1b$B\xff\xfe^\x1b(B", b"\xff\xfe\xfd", rng.randbytes(rng.randint(1, 40)))))
    date = _even(rng.choice((b"2024", b"20241399", b"abcdefgh", rng.randbytes(8))))
    return f"charset {charset!r}, PatientName {name[:12]!r}, StudyDate {date!r}", base.with_elements(
        uid, (0x00080005, base.encode(0x00080005, "CS", _even(charset))),
        (0x00100010, base.encode(0x00100010, "PN", name)), (0x00080020, base.encode(0x00080020, "DA", date)))


def _wrong_context(rng, base, uid):
    context = rng.choice(sorted(set(CONTEXT_OF.values()) - {base.context}) + [7])
    return f"sent on context {context}", base.with_elements(uid), uid, context


DATASET_KINDS: dict[str, Callable] = {
    "bytes": _byte_level,
    "wrong-vr-value": _wrong_vr_value,
    "odd-binary-length": _odd_binary_length,
    "undefined-length": _undefined_length,
    "nested-sequences": _nested_sequences,
    "huge-length": _huge_length,
    "invalid-uid": _invalid_uid,
    "modality": _modality_garbage,
    "pixel-data": _pixel_data,
    "image-attributes": _image_attributes,
    "numbers": _numbers_garbage,
    "text": _text_garbage,
    "wrong-context": _wrong_context,
}
#: Byte-level mutations are a third of the inputs; element-level ones share the rest.
_DATASET_WEIGHTS = {kind: (24 if kind == "bytes" else 4) for kind in DATASET_KINDS}


def dataset_input(bases: tuple[Base, ...], seed: int, index: int) -> StoreInput:
    rng = rng_for(seed, "dataset", index)
    base = bases[index % len(bases)]
    kind = rng.choices(list(_DATASET_WEIGHTS), weights=list(_DATASET_WEIGHTS.values()))[0]
    uid = uid_for(seed, "dataset", index)
    detail, data, *rest = DATASET_KINDS[kind](rng, base, uid)
    command_uid, context = (rest + [uid, base.context][len(rest):])[:2]
    fragment = rng.choice((1024, 16384, 262138))
    return StoreInput(index, base.name, kind, detail, command_uid, data, context, fragment)


class StoreLane:
    """One association of TESTSCU carrying C-STOREs until the node ends it."""

    def __init__(self, port: int):
        self.port = port
        self.peer: RawPeer | None = None
        self.message_id = 0

    def store(self, item: StoreInput) -> Answer:
        if self.peer is None:
            self.peer = RawPeer(self.port)
            answer = self.peer.associate("TESTSCU", contexts=CONTEXTS)
            assert answer.type == ASSOCIATE_AC, f"TESTSCU was not accepted: {answer}"
        self.message_id = self.message_id % 0xFFFF + 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about the invalid UIDs sent on purpose
            command = c_store_rq(CT, item.uid, self.message_id)
        self.peer.sock.settimeout(ANSWER_SECONDS)
        try:
            self.peer.send(store_pdus(item.context, command, item.data, item.fragment))
        except OSError:
            pass  # the node ended the association while the data set arrived
        sent = time.monotonic()
        try:
            answer = self.peer.read_pdu(timeout=ANSWER_SECONDS)
        except TimeoutError:
            self.close()
            return Answer("silence", time.monotonic() - sent)
        seconds = time.monotonic() - sent
        if answer is not None and answer.type == P_DATA_TF:
            response = answer.command()
            assert response.MessageIDBeingRespondedTo == self.message_id, response
            status = int(response.Status)
            # Success, or a warning: stored all the same (PS3.4 table B.2-1).
            return Answer(f"status {status:#06x}", seconds, status == 0 or status & 0xF000 == 0xB000)
        self.close()
        return Answer("close" if answer is None else _PDU_NAMES.get(answer.type, f"PDU {answer.type:#04x}"),
                      seconds)

    def close(self) -> None:
        if self.peer is not None:
            self.peer.close()
            self.peer = None


# ---------------------------------------------------------------------------
# The node under fuzzing, and its invariants
# ---------------------------------------------------------------------------


class RssSampler:
    """The peak VmRSS of one process, sampled every 50 ms in a thread."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak = rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_bytes(self.pid))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def read_as_the_pipeline_does(path: Path) -> None:
    """Read a stored instance as dicomio/series.py does: the whole file, every value, the pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about, and keeps, invalid values
        dataset = pydicom.dcmread(path)
        for data_element in dataset.iterall():
            _ = data_element.value
        if "PixelData" in dataset:
            _ = dataset.pixel_array


class NodeWatch:
    """The invariants checked after each batch.

    A dead node, a listed peer refused or memory over its bound stops the
    run; defects that leave the node serving (an input never answered, an
    unreadable instance, a dead thread, a slot never given back) are
    collected and reported together at the end, so that one run finds them all.
    """

    def __init__(self, node, listed_slices: list[Path],
                 store: Callable[[list[Path]], subprocess.CompletedProcess]):
        self.node = node
        self.listed_slices = listed_slices
        self.store = store
        self.baseline = rss_bytes(node.proc.pid)
        self.sampler = RssSampler(node.proc.pid)
        self.checked: set[Path] = set()
        self.defects: list[str] = []
        self.problems = 0
        self.handled_tracebacks = 0

    def after_batch(self, batch: int, inputs: dict[str, object], acknowledged: set[str]) -> str:
        node = self.node
        # (d) alive.
        assert node.proc.poll() is None, f"segnode exited with {node.proc.returncode}:\n{node.log()[-4000:]}"
        # (a) a listed peer still stores.
        listed = self.listed_slices[batch]
        result = self.store([listed])
        assert result.returncode == 0, f"a listed peer could not store after batch {batch}: {result.stderr}"
        stored = {path.stem: path for path in node.stored_files()}
        listed_uid = str(pydicom.dcmread(listed, stop_before_pixels=True).SOPInstanceUID)
        assert listed_uid in stored, f"storescu's slice {listed_uid} is not in the store after batch {batch}"
        # (b) memory.
        growth = self.sampler.peak - self.baseline
        assert growth < RSS_GROWTH_BOUND, (
            f"node RSS peaked at {self.sampler.peak >> 20} MiB, {growth >> 20} MiB over its "
            f"{self.baseline >> 20} MiB at start (bound {RSS_GROWTH_BOUND >> 20} MiB), batch {batch}")
        # (c) acknowledged means stored, and stored means readable.
        for uid in sorted(acknowledged - stored.keys()):
            self.defects.append(f"acknowledged but not in the store: {inputs[uid]}")
        for uid, path in stored.items():
            if path in self.checked:
                continue
            self.checked.add(path)
            try:
                read_as_the_pipeline_does(path)
            except Exception as exc:  # whatever pydicom or a decoder raises is the defect
                self.defects.append(f"stored but unreadable ({type(exc).__name__}: {str(exc)[:160]}): "
                                    f"{inputs.get(uid, uid)}")
        # (d) no thread died and nothing of ours logged an error.
        log = node.log()
        for problem in log_problems(log)[self.problems :]:
            self.defects.append(f"batch {batch}: {problem}")
        self.problems = len(log_problems(log))
        self.handled_tracebacks = log.count("Traceback") - log.count("_bootstrap_inner")
        # Every connection of the batch has ended, so none may still hold a slot.
        deadline = time.monotonic() + ANSWER_SECONDS
        while (held := _held(node.metrics())) and time.monotonic() < deadline:
            time.sleep(0.1)
        if held:
            self.defects.append(f"batch {batch}: after every connection closed, the node still counts {held}")
        return (f"RSS peak +{growth >> 20} MiB over {self.baseline >> 20} MiB, "
                f"{self.handled_tracebacks} pynetdicom tracebacks logged so far")

    def finish(self) -> None:
        self.sampler.stop()
        assert not self.defects, f"{len(self.defects)} defect(s):\n" + "\n".join(self.defects[:40])


_LOG_HEADER = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ (ERROR|CRITICAL) (\S+): (.*)$")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")


def log_problems(log: str) -> list[str]:
    """Threads that died of an exception, and errors logged by our own code.

    pynetdicom logs a traceback for each PDU it cannot decode and answers it
    with an A-ABORT, as it should; those are not problems. A thread that
    dies (Python prints its traceback from ``_bootstrap_inner``) is one, and
    so is any ERROR from a logger that is not pynetdicom's. Lines of
    different threads interleave in the log, so the exception of a dead
    thread is the first exception line after its ``_bootstrap_inner``.
    """
    lines = log.splitlines()
    problems = []
    for number, line in enumerate(lines):
        if "in _bootstrap_inner" in line:
            error = next((later for later in lines[number : number + 60] if _EXCEPTION_LINE.match(later)),
                         "an exception not found in the log")
            problems.append(f"a thread died: {error}")
        elif (header := _LOG_HEADER.match(line)) and not header.group(2).startswith("pynetdicom"):
            problems.append(f"{header.group(2)} logged {header.group(1)}: {header.group(3)[:200]}")
    return problems


def _held(metrics: dict[str, float]) -> dict[str, float]:
    names = ("segnode_active_associations", "segnode_pending_connections")
    return {name: metrics[name] for name in names if metrics.get(name, 0.0) != 0.0}


def _report(capsys, line: str) -> None:
    with capsys.disabled():
        print(line, flush=True)


def listed_slices(folder: Path) -> list[Path]:
    """One slice for the listed peer to store after each batch."""
    return write_ct_series(folder, ExplicitVRLittleEndian, slices=BATCHES, rows=32, columns=32, seed=1)


@pytest.fixture
def fuzz_node(node_factory, tmp_path):
    node = node_factory(**NODE_SETTINGS).start()
    watch = NodeWatch(node, listed_slices(tmp_path / "listed"), lambda files: storescu(node, files))
    yield node, watch
    watch.sampler.stop()


@pytest.fixture
def tls_fuzz_node(node_factory, tmp_path):
    """A node on a DICOM TLS port, and the listed peer's credentials."""
    pki = Pki.make(tmp_path / "pki")
    node = start_tls_node(node_factory, pki, **NODE_SETTINGS)
    watch = NodeWatch(node, listed_slices(tmp_path / "listed"), lambda files: storescu_tls(node, pki, files))
    yield node, pki, watch
    watch.sampler.stop()


@pytest.fixture(scope="module")
def slice_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fuzz-slices")
    files = {
        f"synthetic {name}": write_ct_series(folder / name, syntax, slices=1, rows=32, columns=32)[0]
        for name, syntax in (("explicit VR", ExplicitVRLittleEndian), ("implicit VR", ImplicitVRLittleEndian))
    }
    if SIEMENS.is_dir():
        files["Siemens JPEG 2000"] = sorted(SIEMENS.iterdir())[0]
    return files


def run_pdu_batches(watch: NodeWatch, port: int, tls: ssl.SSLContext | None, slice_file: Path,
                    capsys, kind: str) -> None:
    """Every PDU-level batch against `port` (inside TLS sessions with `tls`), checked after each."""
    base = Base.read("synthetic explicit VR", slice_file)
    with replayable(kind), ThreadPoolExecutor(PDU_THREADS) as pool:
        for batch in range(BATCHES):
            start = time.monotonic()
            items = [pdu_input(SEED, batch * BATCH_SIZE + i, base) for i in range(BATCH_SIZE)]
            answers = list(pool.map(lambda item: exchange(port, item, tls), items))
            watch.defects += [f"batch {batch}: no answer within {ANSWER_SECONDS} s to {item}"
                              for item, a in zip(items, answers, strict=True) if a.what == "silence"]
            elapsed = time.monotonic() - start
            acknowledged = {item.uid for item, a in zip(items, answers, strict=True) if a.acknowledged}
            memory = watch.after_batch(batch, {item.uid: item for item in items}, acknowledged)
            slowest = max(zip(answers, items, strict=True), key=lambda pair: pair[0].seconds)
            counts = Counter(a.what for a in answers).most_common(5)
            _report(capsys, f"{kind} batch {batch}: {len(items)} inputs in {elapsed:.1f} s, {memory}, "
                    f"slowest answer {slowest[0].seconds:.1f} s (index {slowest[1].index}), "
                    f"{len(acknowledged)} C-STOREs stored, answers {counts}")
        watch.finish()


def test_pdu_level_inputs_are_answered_and_harm_nothing(fuzz_node, slice_files, capsys):
    node, watch = fuzz_node
    run_pdu_batches(watch, node.port, None, slice_files["synthetic explicit VR"], capsys, "PDU level")


def test_pdu_level_inputs_inside_tls_are_answered_and_harm_nothing(tls_fuzz_node, slice_files, capsys):
    """The same inputs, each in a TLS session of its own after a good
    handshake: the TLS port's socket (node/receive/transport.py,
    GuardedTlsSocket) must hold the same bounds as the plain one."""
    node, pki, watch = tls_fuzz_node
    run_pdu_batches(watch, node.tls_port, pki.context(), slice_files["synthetic explicit VR"], capsys,
                    "PDU level over TLS")


def test_mutated_data_sets_are_refused_or_stored_readable(fuzz_node, slice_files, capsys):
    node, watch = fuzz_node
    bases = tuple(Base.read(name, path) for name, path in slice_files.items())
    acknowledged_by_kind: Counter = Counter()
    lanes = [StoreLane(node.port) for _ in range(STORE_LANES)]

    def run_lane(lane: StoreLane, items: list[StoreInput]) -> list[Answer]:
        return [lane.store(item) for item in items]

    with replayable("data set level"), ThreadPoolExecutor(STORE_LANES) as pool:
        for batch in range(BATCHES):
            start = time.monotonic()
            items = [dataset_input(bases, SEED, batch * BATCH_SIZE + i) for i in range(BATCH_SIZE)]
            shares = [items[lane::STORE_LANES] for lane in range(STORE_LANES)]
            answers = {item.index: answer
                       for share, results in zip(shares, pool.map(run_lane, lanes, shares), strict=True)
                       for item, answer in zip(share, results, strict=True)}
            watch.defects += [f"batch {batch}: no answer within {ANSWER_SECONDS} s to {item}"
                              for item in items if answers[item.index].what == "silence"]
            elapsed = time.monotonic() - start
            acknowledged = {item.uid for item in items if answers[item.index].acknowledged}
            acknowledged_by_kind.update(item.kind for item in items if answers[item.index].acknowledged)
            memory = watch.after_batch(batch, {item.uid: item for item in items}, acknowledged)
            counts = Counter(a.what for a in answers.values()).most_common(4)
            _report(capsys, f"data set batch {batch}: {len(items)} C-STOREs in {elapsed:.1f} s, {memory}, "
                    f"{len(acknowledged)} stored, answers {counts}")
        for lane in lanes:
            lane.close()
        _report(capsys, f"stored, by mutation: {dict(acknowledged_by_kind)}")
        watch.finish()


# ---------------------------------------------------------------------------
# MPPS: N-CREATE and N-SET
# ---------------------------------------------------------------------------

MPPS = "1.2.840.10008.3.1.2.3.3"
#: CONTEXTS (ids 1-7), then MPPS in explicit (id 9) and implicit VR (id 11):
#: the CT contexts stay, so that a step can be sent on the wrong one.
STEP_CONTEXTS = (*CONTEXTS, (MPPS, (ExplicitVRLittleEndian,)), (MPPS, (ImplicitVRLittleEndian,)))
STEP_CONTEXT_OF = {ExplicitVRLittleEndian: 9, ImplicitVRLittleEndian: 11}
STEP_BATCHES = 3
# Command Field values (PS3.7 annex E) and "no data set" (section 9.3).
_N_CREATE_RQ, _N_SET_RQ, _N_EVENT_REPORT_RQ, _C_STORE_RQ = 0x0140, 0x0120, 0x0100, 0x0001
_NO_DATA_SET = 0x0101
# Elements of a step (PS3.4 table F.7.2-1) that the node relies on.
_STEP_STATUS, _END_DATE, _END_TIME = 0x00400252, 0x00400250, 0x00400251
_SCHEDULED_STEPS, _PERFORMED_SERIES = 0x00400270, 0x00400340
_STUDY_UID, _SERIES_UID = 0x0020000D, 0x0020000E
_REFERENCED_IMAGES, _REFERENCED_NON_IMAGES = 0x00081140, 0x00400220
_REFERENCED_CLASS, _REFERENCED_INSTANCE = 0x00081150, 0x00081155
# The scanner's study, and the series and images its N-SET lists.
_STEP_STUDY = uid_for(0, "step-study", 0)
_STEP_SERIES = uid_for(0, "step-series", 0)
_STEP_IMAGES = tuple(uid_for(0, "step-image", i) for i in range(3))


def _ui(value: str) -> bytes:
    return _even(value.encode(), b"\0")


@functools.cache
def step_bases() -> dict[str, Base]:
    """A scanner's N-CREATE and final N-SET data sets (tests/test_mpps_protocol.py) in each syntax."""
    bases = {}
    for name, dataset in (("N-CREATE", scanner_create(_STEP_STUDY)),
                          ("N-SET", scanner_set({_STEP_SERIES: _STEP_IMAGES}))):
        for syntax, context in STEP_CONTEXT_OF.items():
            implicit = syntax == ImplicitVRLittleEndian
            data = encode(dataset, implicit, True)
            label = f"{name} {'implicit' if implicit else 'explicit'} VR"
            bases[label] = Base(label, data, implicit, context, tuple(_read_elements(data, implicit)))
    return bases


def step_command(field: int, uid: str | None, message_id: int, *, sop_class: str = MPPS,
                 data_set: bool = True) -> bytes:
    """An N-CREATE-RQ (PS3.7 table 10.3-5), N-SET-RQ (table 10.3-3) or other
    request (another DIMSE-N, a C-STORE) on `uid` (None: without one)."""
    prefix = "Affected" if field in (_N_CREATE_RQ, _N_EVENT_REPORT_RQ, _C_STORE_RQ) else "Requested"
    elements = {f"{prefix}SOPClassUID": sop_class, "CommandField": field, "MessageID": message_id,
                "CommandDataSetType": 0x0000 if data_set else _NO_DATA_SET}
    if field == _C_STORE_RQ:
        elements["Priority"] = 0
    if uid is not None:
        elements[f"{prefix}SOPInstanceUID"] = uid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UIDs sent on purpose
        return command_set(**elements)


def _sequence(base: Base, tag: int, items: list[bytes], undefined: bool) -> bytes:
    """A sequence of `items` (each an item's encoded elements), with defined or undefined lengths."""
    if undefined:
        body = b"".join(_delimiter(_ITEM, _UNDEFINED) + item + _delimiter(_ITEM_END) for item in items)
        return base.encode(tag, "SQ", body + _delimiter(_SEQUENCE_END), _UNDEFINED)
    return base.encode(tag, "SQ", b"".join(_delimiter(_ITEM, len(item)) + item for item in items))


def _reference(base: Base, sop_uid: str, sop_class: str = CT) -> bytes:
    return (base.encode(_REFERENCED_CLASS, "UI", _ui(sop_class))
            + base.encode(_REFERENCED_INSTANCE, "UI", _ui(sop_uid)))


def _series_item(base: Base, series_uid: str, references: list[bytes], undefined: bool) -> bytes:
    """A Performed Series Sequence item listing `references` as images."""
    return (base.encode(_SERIES_UID, "UI", _ui(series_uid))
            + _sequence(base, _REFERENCED_IMAGES, references, undefined))


def _unchanged(rng, base, uid):
    return "as the scanner sends it", base.with_elements(uid)


_STEP_STATUSES = (b"", b"IN PROGRESS", b"COMPLETED", b"DISCONTINUED", b"in progress",
                  b"IN PROGRESS\\COMPLETED", b"COMPLETED\0", b"IN  PROGRESS", b"\xff\xfe")


def _step_status(rng, base, uid):
    if rng.random() < 0.15:
        return "without PerformedProcedureStepStatus", base.with_elements(uid, drop=(_STEP_STATUS,))
    value = _even(rng.choice((*_STEP_STATUSES, _text(rng, rng.choice((3, 16, 17, 5000))))))
    return (f"PerformedProcedureStepStatus {value[:24]!r}",
            base.with_elements(uid, (_STEP_STATUS, base.encode(_STEP_STATUS, "CS", value))))


#: What the node reads of a step, and its VR.
_RELIED_ON = {_STEP_STATUS: "CS", _SCHEDULED_STEPS: "SQ", _PERFORMED_SERIES: "SQ", _END_DATE: "DA",
              _END_TIME: "TM", 0x00100020: "LO", 0x00080016: "UI"}


def _step_wrong_vr(rng, base, uid):
    tag = rng.choice(sorted(_RELIED_ON))
    vr = rng.choice(sorted({"SQ", "UN", "OB", "US", "FD", "UI", "AT", "LO"} - {_RELIED_ON[tag]}))
    value = _even(rng.choice((b"", _text(rng, rng.randint(1, 40)), rng.randbytes(rng.randint(1, 40)),
                              _delimiter(_ITEM, _UNDEFINED) + rng.randbytes(12),
                              _delimiter(_ITEM, 14) + base.encode(_STUDY_UID, "UI", b"1.2.3\0"))))
    written = "implicit VR" if base.implicit else vr
    return (f"{_tag(tag)} as {written} holding {len(value)} bytes {value[:12]!r}",
            base.with_elements(uid, (tag, base.encode(tag, vr, value))))


def _scheduled_steps(rng, base, uid):
    count = rng.choice((0, 1, 2, 100, 101, 5000))
    study = rng.choice(("valid", "none", "empty", "invalid", "two values", "one per item"))
    bad = rng.choice(_BAD_UIDS)
    undefined = rng.random() < 0.3

    def item(number: int) -> bytes:
        accession = base.encode(0x00080050, "SH", b"ACC0001 ")
        if study == "none":
            return accession
        value = {"valid": _STEP_STUDY, "empty": "", "invalid": bad, "two values": f"{_STEP_STUDY}\\1.2.3",
                 "one per item": f"{_STEP_STUDY}.{number + 1}"}[study]
        return accession + base.encode(_STUDY_UID, "UI", _ui(value))

    sequence = _sequence(base, _SCHEDULED_STEPS, [item(n) for n in range(count)], undefined)
    detail = f"{count} scheduled steps, Study Instance UID {study}{f' {bad!r}' * (study == 'invalid')}"
    return detail, base.with_elements(uid, (_SCHEDULED_STEPS, sequence))


def _performed_series(rng, base, uid):
    """Thousands of series or instances, a series listed again and again, one bad reference among many."""
    shape = rng.choice(("series", "series", "instances", "instances", "repeated", "bad reference", "no uid"))
    undefined = rng.random() < 0.3
    if shape == "series":
        count = rng.choice((199, 200, 201, 3000, 10000))
        series = [f"{_STEP_SERIES}.{n + 1}" for n in range(count)]
        items = [_series_item(base, one, [_reference(base, f"{one}.1")], undefined) for one in series]
        detail = f"{count} series of one image"
    elif shape == "instances":
        # Split between the image and non-image references, which count together.
        count = rng.choice((1000, 9999, 10000, 10001, 20000))
        references = [_reference(base, f"{_STEP_SERIES}.{n + 1}") for n in range(count)]
        images = rng.randint(0, count)
        items = [_series_item(base, _STEP_SERIES, references[:images], undefined)
                 + _sequence(base, _REFERENCED_NON_IMAGES, references[images:], undefined)]
        detail = f"one series of {count} instances ({images} as images)"
    elif shape == "repeated":
        count = rng.choice((2, 100, 2000))
        items = [_series_item(base, _STEP_SERIES, [_reference(base, f"{_STEP_SERIES}.{n + 1}")], undefined)
                 for n in range(count)]
        detail = f"the same series in {count} items"
    elif shape == "bad reference":
        count = rng.choice((1, 10, 5000))
        references = [_reference(base, f"{_STEP_SERIES}.{n + 1}") for n in range(count)]
        at = rng.randrange(count)
        how, references[at] = rng.choice((
            ("without its SOP Instance UID", base.encode(_REFERENCED_CLASS, "UI", _ui(CT))),
            ("with an invalid SOP Instance UID", _reference(base, rng.choice(_BAD_UIDS))),
            ("with an invalid SOP Class UID", _reference(base, f"{_STEP_SERIES}.1", rng.choice(_BAD_UIDS))),
            ("with two SOP Instance UIDs", _reference(base, f"{_STEP_SERIES}.1\\{_STEP_SERIES}.2")),
            ("of random bytes", rng.randbytes(rng.randint(1, 40))),
        ))
        items = [_series_item(base, _STEP_SERIES, references, undefined)]
        detail = f"reference {at} of {count} {how}"
    else:
        count = rng.choice((1, 1000))
        items = [base.encode(0x00181030, "LO", b"Abdomen ")] * count
        detail = f"{count} series without a Series Instance UID"
    lengths = "undefined" if undefined else "defined"
    sequence = _sequence(base, _PERFORMED_SERIES, items, undefined)
    return f"Performed Series Sequence: {detail}, {lengths} lengths", \
        base.with_elements(uid, (_PERFORMED_SERIES, sequence))


#: What the scanner's N-CREATE says of what an N-SET may not change (PS3.4 table F.7.2-1).
_CREATED_VALUES = {
    keyword: str(getattr(scanner_create(_STEP_STUDY), keyword)).encode()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PerformedProcedureStepID",
                    "PerformedStationAETitle", "PerformedStationName", "PerformedLocation",
                    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "Modality",
                    "StudyID")
} | {"SOPClassUID": MPPS.encode()}


def _not_settable(rng, base, uid):
    keyword = rng.choice(sorted(_CREATED_VALUES))
    tag = tag_for_keyword(keyword)
    vr = dictionary_VR(tag)
    same = _CREATED_VALUES[keyword]
    value = rng.choice((same, same + b"1", b"", _text(rng, rng.randint(1, 64))))
    encoded = base.encode(tag, vr, _even(value, b"\0" if vr == "UI" else b" "))
    return f"{keyword} {value[:24]!r} (created as {same[:24]!r})", base.with_elements(uid, (tag, encoded))


#: Groups 0000-0007: command, file meta, directory elements and odd groups, none an attribute.
_NO_ATTRIBUTE_TAGS = (0x00000000, 0x00000900, 0x00001000, 0x00020000, 0x00020010, 0x00041220, 0x00010010,
                      0x00030010, 0x00050000, 0x00070010)


def _group_elements(rng, base, uid):
    tag = rng.choice(_NO_ATTRIBUTE_TAGS)
    vr = rng.choice(("UL", "US", "UI", "OB", "SQ"))
    value = rng.choice((struct.pack("<L", 1), b"1.2.3\0", b"", rng.randbytes(6)))
    return f"{_tag(tag)} as {vr}", base.with_elements(uid, (tag, base.encode(tag, vr, value)))


def _other_syntax(rng, base, uid):
    [other] = set(STEP_CONTEXT_OF.values()) - {base.context}
    return f"sent on MPPS context {other}", base.with_elements(uid), uid, other


def _size_bound(rng, base, uid):
    """A data set just under node/receive/transport.py's bound, or just over it."""
    over = rng.random() < 0.5
    target = STEP_DATASET_BOUND + (1 + rng.randrange(4096) if over else -rng.randrange(4096))
    padding = target - len(base.with_elements(uid)) - len(base.encode(0x00291010, "OB", b""))
    padding += padding % 2 if over else -(padding % 2)
    data = base.with_elements(uid, (0x00291010, base.encode(0x00291010, "OB", bytes(padding))))
    assert (len(data) > STEP_DATASET_BOUND) == over, len(data)
    return f"{len(data)} bytes, {'over' if over else 'under'} the bound", data


STEP_KINDS: dict[str, Callable] = {
    "unchanged": _unchanged,
    "bytes": _byte_level,
    "step-status": _step_status,
    "wrong-vr": _step_wrong_vr,
    "scheduled-steps": _scheduled_steps,
    "performed-series": _performed_series,
    "not-settable": _not_settable,
    "group-elements": _group_elements,
    "other-syntax": _other_syntax,
    "size-bound": _size_bound,
    **{kind: DATASET_KINDS[kind] for kind in ("odd-binary-length", "undefined-length", "nested-sequences",
                                              "huge-length", "invalid-uid", "modality", "text",
                                              "wrong-context")},
}
_STEP_WEIGHTS = {kind: 3 for kind in STEP_KINDS} | {
    "bytes": 20, "unchanged": 4, "step-status": 6, "wrong-vr": 6, "scheduled-steps": 6, "performed-series": 8,
    "not-settable": 6, "other-syntax": 2, "size-bound": 1}

#: Which step the mutated request names: (request, requests before it, whether it must be refused).
_TARGETS = {
    "a new step": (_N_CREATE_RQ, (), False),
    "a step in progress": (_N_SET_RQ, (_N_CREATE_RQ,), False),
    "an ended step": (_N_SET_RQ, (_N_CREATE_RQ, _N_SET_RQ), True),
    "an unknown step": (_N_SET_RQ, (), True),
    "an existing step": (_N_CREATE_RQ, (_N_CREATE_RQ,), True),
}
_TARGET_WEIGHTS = {"a new step": 40, "a step in progress": 35, "an ended step": 10, "an unknown step": 5,
                   "an existing step": 10}
_REQUEST_NAMES = {_N_CREATE_RQ: "N-CREATE", _N_SET_RQ: "N-SET", 0x0110: "N-GET", 0x0130: "N-ACTION",
                  0x0150: "N-DELETE", _N_EVENT_REPORT_RQ: "N-EVENT-REPORT", _C_STORE_RQ: "C-STORE"}


@dataclass(frozen=True)
class StepRequest:
    """One request as sent: its command, the data set bytes (None: no data
    set PDVs, whatever the command says), the context."""

    name: str
    command: bytes
    data: bytes | None
    context: int
    #: The Message ID the response must name; None where a mutation may have changed it.
    message_id: int | None

    def pdus(self, fragment: int) -> bytes:
        if self.data is None:
            return p_data((self.context, 0x03, self.command))
        return store_pdus(self.context, self.command, self.data, fragment)


@dataclass(frozen=True)
class StepInput:
    """Requests that set a step up as a scanner does, then the mutated one,
    then, after a mutated N-CREATE, sometimes the scanner's N-SET on it."""

    index: int
    target: str
    kind: str
    detail: str
    step_uid: str  # the step the mutated request's command names
    requests: tuple[StepRequest, ...]
    mutated: int  # its position in `requests`
    fragment: int
    #: A duplicate N-CREATE, an N-SET on an unknown or ended step: success would be a defect.
    must_fail: bool

    def __str__(self) -> str:
        request = self.requests[self.mutated]
        size = "no data set" if request.data is None else f"{len(request.data)} bytes"
        return (f"MPPS input {self.index} ({request.name} on {self.target}, {self.kind}: {self.detail}; "
                f"{size} on context {request.context}, step {self.step_uid})")


def _command_mutation(rng: random.Random, field: int) -> tuple[str, int, dict]:
    """What a mutation changes in the command: (detail, command field, step_command arguments)."""
    variant = rng.choice(("no instance", "CT class", "bad class", "bad instance", "no data set",
                          "data set announced as none", "other request", "bit flips", "message id"))
    if variant == "no instance":
        return "no SOP Instance UID", field, {"uid": None}
    if variant == "CT class":
        return "CT Image Storage as SOP Class", field, {"sop_class": CT}
    if variant == "bad class":
        bad = rng.choice([b for b in _BAD_UIDS if b.strip(" \0")])
        return f"SOP Class UID {bad!r}", field, {"sop_class": bad}
    if variant == "bad instance":
        bad = rng.choice([b for b in _BAD_UIDS if b.strip(" \0")])
        return f"SOP Instance UID {bad!r}", field, {"uid": bad}
    if variant == "no data set":
        return "no data set", field, {"data_set": False}
    if variant == "data set announced as none":
        return "a data set after a command announcing none", field, {"data_set": False, "send_data": True}
    if variant == "other request":
        other = rng.choice(sorted(set(_REQUEST_NAMES) - {_N_CREATE_RQ, _N_SET_RQ}))
        return f"{_REQUEST_NAMES[other]} with the data set", other, {}
    if variant == "message id":
        mid = rng.choice((0, 0xFFFF))
        return f"Message ID {mid}", field, {"message_id": mid}
    flips = rng.randint(1, 4)
    return f"{flips} bit flips", field, {"flips": flips}


def step_input(seed: int, index: int) -> StepInput:
    """The `index`-th MPPS input; its step is a fresh one named by (seed, index)."""
    rng = rng_for(seed, "mpps", index)
    target = rng.choices(list(_TARGET_WEIGHTS), weights=list(_TARGET_WEIGHTS.values()))[0]
    field, before, must_fail = _TARGETS[target]
    syntax = rng.choice(("explicit", "implicit"))
    bases = step_bases()
    create, final = bases[f"N-CREATE {syntax} VR"], bases[f"N-SET {syntax} VR"]
    uid = uid_for(seed, "mpps", index)

    def scanners(request: int, message_id: int) -> StepRequest:
        base = create if request == _N_CREATE_RQ else final
        return StepRequest(_REQUEST_NAMES[request], step_command(request, uid, message_id),
                           base.with_elements(uid), base.context, message_id)

    requests = [scanners(request, number) for number, request in enumerate(before, 1)]
    kind = rng.choices(list(_STEP_WEIGHTS), weights=list(_STEP_WEIGHTS.values()))[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid values sent on purpose
        base = create if field == _N_CREATE_RQ else final
        detail, data, *rest = STEP_KINDS[kind](rng, base, uid)
    command_uid, context = (rest + [uid, base.context][len(rest):])[:2]
    message_id = len(requests) + 1
    arguments: dict = {"uid": command_uid}
    if rng.random() < 0.12:
        change, field, changed = _command_mutation(rng, field)
        detail += f"; command: {change}"
        must_fail = must_fail and field in (_N_CREATE_RQ, _N_SET_RQ)
        arguments |= changed
    flips = arguments.pop("flips", 0)
    send_data = arguments.pop("send_data", arguments.get("data_set", True))
    message_id = arguments.pop("message_id", message_id)
    command = bytearray(step_command(field, message_id=message_id, **arguments))
    for _ in range(flips):
        command[rng.randrange(len(command))] ^= 1 << rng.randrange(8)
    requests.append(StepRequest(_REQUEST_NAMES[field], bytes(command), data if send_data else None, context,
                                None if flips else message_id))
    if target == "a new step" and rng.random() < 0.5:
        requests.append(scanners(_N_SET_RQ, len(requests) + 1))
    fragment = rng.choice((1024, 16384, 262138))
    step_uid = arguments["uid"] or "(none)"
    return StepInput(index, target, kind, detail, step_uid, tuple(requests), len(before), fragment, must_fail)


def _pdvs(body: bytes) -> Iterator[tuple[int, bytes]]:
    """(message control header, bytes) of each PDV of a P-DATA-TF (PS3.8 section 9.3.5)."""
    offset = 0
    while offset + 6 <= len(body):
        length, _, control = struct.unpack_from(">LBB", body, offset)
        yield control, body[offset + 6 : offset + 4 + length]
        offset += 4 + length


def read_response(peer: RawPeer, deadline: float) -> Dataset | str:
    """The command set of the node's response, its data set read and
    dropped; or how the node ended the association instead ("A-ABORT", "close"...)."""
    command, response = bytearray(), None
    while True:
        answer = peer.read_pdu(timeout=max(deadline - time.monotonic(), 0.01))
        if answer is None:
            return "close"
        if answer.type != P_DATA_TF:
            return _PDU_NAMES.get(answer.type, f"PDU {answer.type:#04x}")
        for control, data in _pdvs(answer.body):
            if control & 0x01:
                command += data
                if control & 0x02:
                    response = decode_command(bytes(command))
                    if response.CommandDataSetType == _NO_DATA_SET:
                        return response
            elif control & 0x02 and response is not None:
                return response


class StepLane:
    """One association of TESTSCU carrying MPPS requests until the node ends it."""

    def __init__(self, port: int):
        self.port = port
        self.peer: RawPeer | None = None

    def send(self, item: StepInput) -> tuple[Answer, ...]:
        """The node's answer to each request of `item`, in order. A scanner's
        request before the mutated one that meets the end of the association
        is sent again on a new one: the node ends an association whose peer
        was quiet for its network_timeout, which a request that kept the
        node busy that long counts as quiet."""
        answers = []
        for number, request in enumerate(item.requests):
            answer = self._request(request, item.fragment)
            if number < item.mutated and answer.what in ("A-ABORT", "close"):
                answer = self._request(request, item.fragment)
            answers.append(answer)
        return tuple(answers)

    def _request(self, request: StepRequest, fragment: int) -> Answer:
        if self.peer is not None and select.select([self.peer.sock], [], [], 0)[0]:
            self.close()  # an A-ABORT or a close came unasked: the node ended the association
        if self.peer is None:
            self.peer = RawPeer(self.port)
            answer = self.peer.associate("TESTSCU", contexts=STEP_CONTEXTS)
            assert answer.type == ASSOCIATE_AC, f"TESTSCU was not accepted: {answer}"
        self.peer.sock.settimeout(ANSWER_SECONDS)
        try:
            self.peer.send(request.pdus(fragment))
        except OSError:
            pass  # the node ended the association while the data set arrived
        sent = time.monotonic()
        try:
            response = read_response(self.peer, sent + ANSWER_SECONDS)
        except TimeoutError:
            self.close()
            return Answer("silence", time.monotonic() - sent)
        seconds = time.monotonic() - sent
        if isinstance(response, Dataset):
            if request.message_id is not None:
                assert response.MessageIDBeingRespondedTo == request.message_id, response
            status = int(response.Status)
            return Answer(f"status {status:#06x}", seconds, status == 0)
        self.close()
        return Answer(response, seconds)

    def close(self) -> None:
        if self.peer is not None:
            self.peer.close()
            self.peer = None


class StepWatch:
    """The steps' invariants, checked after each batch: every file under
    mpps/ is the version the index names and reads back as the node reads
    it (``dcmread``, every value); every step the node acknowledged is in
    the index; nothing is left in the spool (a data set sent as a C-STORE
    of the step is spooled).

    A request the node is still handling (one that went unanswered) may
    hold the files and the index apart for a moment, so they are given
    ANSWER_SECONDS to agree.
    """

    def __init__(self, node):
        self.node = node
        self.folder = node.storage_dir / "mpps"
        self.index = InstanceIndex(node.storage_dir, read_only=True)
        self.checked: set[Path] = set()

    def problems(self, acknowledged: dict[str, StepInput]) -> list[str]:
        deadline = time.monotonic() + ANSWER_SECONDS
        while (problems := self._disagreements(acknowledged)) and time.monotonic() < deadline:
            time.sleep(0.5)
        return problems + self._unreadable()

    def _disagreements(self, acknowledged: dict[str, StepInput]) -> list[str]:
        problems = [f"{path.name} left in the spool" for path in self.node.partial_files()]
        for path in sorted(self.folder.iterdir()):
            named = self.index.step(path.name.rsplit(".", 2)[0])
            if named is None or named.path != path:
                problems.append(f"{path.name} under mpps/ is not the file the index names for its step "
                                f"({named})")
        for uid, item in acknowledged.items():
            # The command's UID as pydicom decodes it, spaces and NULs around it dropped.
            named = self.index.step(uid.strip(" \0"))
            if named is None or not named.path.is_file():
                problems.append(f"acknowledged but not kept ({named}): {item}")
        return problems

    def _unreadable(self) -> list[str]:
        """Step files, each read once (a new version is a new file), that pydicom cannot read."""
        problems = []
        for path in sorted(set(self.folder.glob("*.dcm")) - self.checked):
            self.checked.add(path)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # pydicom warns about, and keeps, invalid values
                    step = pydicom.dcmread(path)
                    for data_element in step.iterall():
                        _ = data_element.value
                assert path.name.startswith(f"{step.SOPInstanceUID}."), f"it holds step {step.SOPInstanceUID}"
            except Exception as exc:  # whatever pydicom raises is the defect
                problems.append(f"step file {path.name} unreadable ({type(exc).__name__}: {str(exc)[:160]})")
        return problems

    def close(self) -> None:
        self.index.close()


def a_scanner_completes_its_series(node, folder: Path, batch: int) -> None:
    """A scanner's step, COMPLETED before its images (as many send it),
    completes the series with its last image."""
    files = write_ct_series(folder, slices=3, rows=32, columns=32, seed=1000 + batch)
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    series_uid = str(headers[0].SeriesInstanceUID)
    scanner = Scanner(node)
    step_uid = uid_for(SEED, "good step", batch)
    created = scanner.n_create(step_uid, scanner_create(str(headers[0].StudyInstanceUID)))
    assert created.Status == 0x0000, f"a scanner's N-CREATE after batch {batch}: {created}"
    ended = scanner.n_set(step_uid, scanner_set({series_uid: [str(h.SOPInstanceUID) for h in headers]}))
    assert ended.Status == 0x0000, f"a scanner's N-SET after batch {batch}: {ended}"
    scanner.store(files)
    row = completed(node, series_uid, len(files))
    assert row["completed_by"] == "mpps", f"the scanner's series after batch {batch}: {row}"


def test_mpps_requests_are_answered_and_harm_nothing(fuzz_node, tmp_path, capsys):
    node, watch = fuzz_node
    steps = StepWatch(node)
    lanes = [StepLane(node.port) for _ in range(STORE_LANES)]

    def run_lane(lane: StepLane, items: list[StepInput]) -> list[tuple[Answer, ...]]:
        return [lane.send(item) for item in items]

    with replayable("MPPS"), ThreadPoolExecutor(STORE_LANES) as pool:
        for batch in range(STEP_BATCHES):
            start = time.monotonic()
            items = [step_input(SEED, batch * BATCH_SIZE + i) for i in range(BATCH_SIZE)]
            shares = [items[lane::STORE_LANES] for lane in range(STORE_LANES)]
            answers = {item.index: answer
                       for share, results in zip(shares, pool.map(run_lane, lanes, shares), strict=True)
                       for item, answer in zip(share, results, strict=True)}
            elapsed = time.monotonic() - start
            for item in items:
                mutated = answers[item.index][item.mutated]
                set_up = all(answer.acknowledged for answer in answers[item.index][: item.mutated])
                for number, answer in enumerate(answers[item.index]):
                    if answer.what == "silence":
                        watch.defects.append(f"batch {batch}: no answer within {ANSWER_SECONDS} s to "
                                             f"request {number} of {item}")
                    elif number < item.mutated and not answer.acknowledged:
                        watch.defects.append(f"batch {batch}: the scanner's request {number} before the "
                                             f"mutated one was refused ({answer.what}): {item}")
                if item.must_fail and set_up and mutated.acknowledged:
                    watch.defects.append(f"batch {batch}: a request that must fail succeeded: {item}")
            acknowledged = {item.step_uid: item for item in items
                            if answers[item.index][item.mutated].acknowledged}
            memory = watch.after_batch(batch, {}, set())
            watch.defects += [f"batch {batch}: {problem}" for problem in steps.problems(acknowledged)]
            a_scanner_completes_its_series(node, tmp_path / f"scanner{batch}", batch)
            mutated_answers = [answers[item.index][item.mutated] for item in items]
            slowest = max(zip(mutated_answers, items, strict=True), key=lambda pair: pair[0].seconds)
            counts = Counter(a.what for a in mutated_answers).most_common(6)
            _report(capsys, f"MPPS batch {batch}: {len(items)} inputs in {elapsed:.1f} s, {memory}, "
                    f"slowest answer {slowest[0].seconds:.1f} s (index {slowest[1].index}), "
                    f"{len(acknowledged)} mutated requests succeeded, a scanner's step completed its "
                    f"series; answers {counts}")
        for lane in lanes:
            lane.close()
        steps.close()
        watch.finish()
