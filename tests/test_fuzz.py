"""Seeded fuzzing of a running ``segnode serve``: PDUs, then data sets.

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
handshake with a listed peer's certificate. After every batch:

(a) a listed peer (dcmtk storescu, over TLS in the TLS run) still stores a slice;
(b) the node's RSS, sampled every 50 ms, stayed under ``RSS_GROWTH_BOUND``
    above its RSS after start;
(c) every instance the node acknowledged is in the store, and every stored
    instance reads as the pipeline reads it (``dcmread``, every value, then
    ``pixel_array``);
(d) the node is alive and its log has no traceback;

and every input was answered (a status, an A-ASSOCIATE-RJ, an A-ABORT or a
close) within ``ANSWER_SECONDS`` of its last byte.

Every input is a pure function of the seed and its index (``pdu_input``,
``dataset_input``), so a failure, which names both, replays with
``SEGNODE_FUZZ_SEED=<seed> python -m pytest -m fuzz tests/test_fuzz.py``.
The suite is marked ``fuzz`` and left out of the default run
(pyproject.toml); ``.ci/run`` runs it as its own stage.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
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
from pydicom.datadict import DicomDictionary
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless

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
    p_data,
    pdu,
    release_rq,
    store_pdus,
)
from tests.synthetic import dataset_bytes, write_ct_series
from tests.test_hostile_peers import Pki, start_tls_node, storescu_tls
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
            "pdu_input(seed, index, base) and dataset_input(bases, seed, index)")


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
    # Half in the attributes before Pixel Data, which are a small part of a slice.
    pixel_start = next(start for tag, start, _ in elements if tag == _PIXEL_DATA)
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
