"""Stand-in for the pip bootstrap script ansible-test downloads from ci-files.

That host is not reachable from our machines; ansible-test runs this file
instead (scripts/test puts it in ansible-test's cache). It installs the pip
bundled with Python, then lets that pip install what ansible-test asked for
from the package index, with the machine's pip configuration.
"""

import subprocess
import sys

# get-pip's own flags, which pip install does not know.
OWN_FLAGS = {"--no-setuptools", "--no-wheel"}

# ensurepip in a child process: in-process it points PIP_CONFIG_FILE at
# /dev/null for the rest of the process, hiding the machine's pip settings.
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade"], stdout=subprocess.DEVNULL)
args = [arg for arg in sys.argv[1:] if arg not in OWN_FLAGS]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", *args]))
