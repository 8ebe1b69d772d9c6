# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: program
short_description: Install a program of the collection as one zipapp, built on the controller
version_added: 0.2.0
description:
  - Builds a zipapp (run with C(python3 FILE)) of a Python package in the collection's C(programs/)
    directory on the controller, with a C(__main__.py) that runs O(entry_point), and installs it at
    O(dest) in one task.
  - The archive is deterministic (entries sorted and stored uncompressed, fixed dates and modes), so
    the same package content gives the same bytes on any controller, and the task reports a change
    only when the content, the owner, the group or the mode differs.
  - When the node already has the same bytes, owner, group and mode, one remote stat is all the
    task costs. Otherwise the archive goes through the copy action (one transfer), which creates
    the directory of O(dest) when it is missing.
  - This is an action plugin; the work happens on the controller and through
    M(ansible.builtin.copy).
author:
  - Higgs.net node engineering (!UNKNOWN)
options:
  package:
    description:
      - Name of the Python package in the collection's C(programs/) directory, e.g. C(higgs_relay).
      - Every file of the package goes into the archive except bytecode and C(__pycache__).
    type: str
    required: true
  entry_point:
    description:
      - What the archive runs, as C(module:function) with the module inside O(package),
        e.g. C(higgs_relay.connector:main). The function's return value is the exit status.
    type: str
    required: true
  dest:
    description: Absolute path of the archive on the node, e.g. C(/usr/local/lib/higgs-relay/higgs-relay-connector.pyz).
    type: path
    required: true
  owner:
    description: Owner of the archive (name or uid); unchanged when not given.
    type: str
  group:
    description: Group of the archive (name or gid); unchanged when not given.
    type: str
  mode:
    description: Permissions of the archive, as an octal string.
    type: str
    default: "0644"
  probed:
    description:
      - What was read of O(dest) earlier in the same run, by path, as
        RV(higgs.vpn.host_probe#module:stats) returns it (the node role passes what its probe read).
      - When it holds O(dest), it stands in for the remote stat - no round trip when the archive
        there is the one built, the transfer alone otherwise. Without it, or without O(dest) in it,
        a remote stat decides.
      - Give only what was read in this run before any task that may change O(dest).
    type: dict
  probed_key:
    description: The RV(higgs.vpn.host_probe#module:stats) key O(probed) was read with, if any. Never logged.
    type: str
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.flow
attributes:
  action:
    support: full
  async:
    support: none
  bypass_host_loop:
    support: none
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - The diff shows the SHA-1 of the installed archive (with O(probed), only that one is there) and, for
        the new one, its SHA-1 and its entries.
  platform:
    support: full
    platforms: posix
seealso:
  - module: ansible.builtin.copy
notes:
  - The node runs the archive with C(/usr/bin/python3 FILE ARGS...); modules are imported from the
    archive, so nothing else of the package is installed.
"""

EXAMPLES = r"""
- name: Install the relay connector
  higgs.vpn.program:
    package: higgs_relay
    entry_point: higgs_relay.connector:main
    dest: /usr/local/lib/higgs-relay/higgs-relay-connector.pyz
    owner: root
    group: root
    mode: "0644"
  notify: Restart the relay connector
"""

RETURN = r"""
on_controller:
  description: V(true) when the action answered on the controller from O(probed), without a round trip.
  returned: when true
  type: bool
  sample: true
dest:
  description: Path of the archive on the node.
  returned: always
  type: str
  sample: /usr/local/lib/higgs-relay/higgs-relay-connector.pyz
checksum:
  description: SHA-1 of the archive built on the controller.
  returned: always
  type: str
  sample: 2b0fb0a9f4e5e4c9b7d51a0dfb5b6a3d0a4ef1d2
size:
  description: Size of the archive in bytes.
  returned: always
  type: int
  sample: 211042
"""
