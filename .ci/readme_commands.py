"""Print the README's quick-start commands, one per line (what ``.ci/run`` executes verbatim).

They are the non-comment lines of the first ```bash block after the "## Quick start" heading; exactly two are
expected: (a) install and run the demo, (b) install and run the tests.
"""

import re
import sys
from pathlib import Path


def quick_start_commands(text: str) -> list:
    section = text.split("## Quick start", 1)
    if len(section) < 2:
        raise SystemExit("README: no '## Quick start' section")
    block = re.search(r"```bash\n(.*?)```", section[1], re.S)
    if block is None:
        raise SystemExit("README: no ```bash block in the quick-start section")
    commands = [ln.strip() for ln in block.group(1).splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if len(commands) != 2 or "registration-suite demo" not in commands[0] or "pytest" not in commands[1]:
        raise SystemExit(f"README: expected the demo command then the test command, got {commands}")
    return commands


if __name__ == "__main__":
    print("\n".join(quick_start_commands(Path(sys.argv[1] if len(sys.argv) > 1 else "README.md").read_text())))
