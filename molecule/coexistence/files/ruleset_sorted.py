"""Print ``nft list ruleset`` (stdin) with its tables and chains sorted.

nft lists tables, and the chains of a table, in the order they were created.
That order differs between the first converge and a boot: at boot the
collection's unit creates its chains (and with them iptables-nft's tables and
builtin chains) before ufw or dockerd load theirs. Listing order means nothing
to the kernel (base chains run by hook and priority), so it is sorted away;
the rules keep their order within each chain, which does mean something.
"""

import sys


def sorted_ruleset(lines):
    tables, table, block = [], None, None
    for line in lines:
        if line.startswith("table "):
            table, block = [line, []], None
            tables.append(table)
        elif line.startswith("}"):
            table, block = None, None
        elif table is None:
            continue
        elif line.startswith("\t") and not line.startswith("\t\t") and line != "\t}":
            block = [line]
            table[1].append(block)
        elif block is not None and line.strip():
            block.append(line)
    out = []
    for header, blocks in sorted(tables):
        out += [header, "\n\n".join("\n".join(b) for b in sorted(blocks)), "}"]
    return out


if __name__ == "__main__":
    print("\n".join(sorted_ruleset(sys.stdin.read().splitlines())))
