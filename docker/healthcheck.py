#!/usr/bin/env python3
"""The image's HEALTHCHECK: a C-ECHO to the node its configuration describes.

The Verification service (PS3.4 Annex A) proves that the node accepts an
association and answers over DICOM, not only that the process lives. The AE
title, address and port come from /etc/segnode/segnode.yaml rather than from
constants, because a configuration mounted over it may change them: under
``--network host`` the port must be one the host has free. The calling AE
title SEGNODE-HEALTH must be one of that configuration's peers, or the node
rejects the association, as it should.
"""

import os
from pathlib import Path

from config import load_config

CONFIG = Path("/etc/segnode/segnode.yaml")
#: dcmtk's, by its path: pynetdicom installs an echoscu of its own, with other
#: options, into the virtual environment that comes first on PATH.
ECHOSCU = "/usr/bin/echoscu"

# Only the address is needed: an expiring certificate is the metrics' and status's to report.
node = load_config(CONFIG, check_files=False).node
# A node listening on every interface is called on loopback.
address = "127.0.0.1" if node.host in ("0.0.0.0", "::", "") else node.host
# Connect, ACSE and DIMSE timeouts well inside the HEALTHCHECK's 10 s.
os.execv(ECHOSCU, [ECHOSCU, "-to", "3", "-ta", "3", "-td", "3",
                   "-aet", "SEGNODE-HEALTH", "-aec", node.ae_title, address, str(node.port)])
