"""The places where node/receive/transport.py and node/receive/scp.py meet pynetdicom's
insides, pinned: a pynetdicom release that moves one fails here, by name,
before any behaviour test has to be puzzled over."""

from __future__ import annotations

import inspect

import pynetdicom
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer


def test_the_server_seams_exist():
    # GatedAssociationServer overrides these and is made through make_server's server_class.
    assert "server_class" in inspect.signature(AE.make_server).parameters
    for name in ("get_request", "process_request"):
        assert callable(getattr(ThreadedAssociationServer, name)), name
    # The request handler creates the association in a method of its own.
    assert callable(RequestHandler._create_association)
    # StorageSCP runs the server as AE.start_server does: the server's
    # shutdown removes itself from this list.
    assert isinstance(AE()._servers, list)
    assert "self.ae._servers.remove" in inspect.getsource(ThreadedAssociationServer.shutdown)


def test_the_socket_seams_exist():
    # pynetdicom reads our socket with select() and recv(), and closes it.
    source = inspect.getsource(AssociationSocket)
    assert "select.select([self.socket]" in source
    assert "self.socket.recv(bufsize)" in source
    # It reads a PDU's header, then its whole body, through AssociationSocket.recv.
    read = inspect.getsource(DULServiceProvider._read_pdu_data)
    assert "self.socket.recv(6)" in read and "self.socket.recv(pdu_length)" in read


def test_the_spooling_seams_exist():
    # Data sets of C-STOREs are spooled to a NamedTemporaryFile in tempfile's folder.
    assert hasattr(pynetdicom._config, "STORE_RECV_CHUNKED_DATASET")
    decode = inspect.getsource(DIMSEMessage.decode_msg)
    assert "NamedTemporaryFile(delete=False" in decode and "_data_set_path" in decode
    # The message being received, whose spooled part a closed connection leaves.
    assert "self.message" in inspect.getsource(type(Association(AE(), "acceptor").dimse))
