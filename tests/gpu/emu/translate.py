#!/usr/bin/env python3
"""translate.py — rewrites a .cu file of kernels/cuda into C++ for the CPU emulator (cuda_emu.h).

Only two constructs change: `kernel<<<cfg>>>(args)` becomes
`emu_launch(emu_cfg(cfg), "kernel", [&]() { kernel(args); })`, and `extern __shared__ T name[];` becomes a
pointer to the block's dynamic shared memory. Everything else compiles as C++ against the
emulator's headers. Usage: translate.py IN.cu OUT.cpp
"""
import re
import sys


def matching(text, i, open_ch, close_ch):
    """index just past the bracket that closes text[i] (== open_ch)"""
    depth = 0
    while i < len(text):
        c = text[i]
        if c == open_ch:
            depth += 1
        elif c == close_ch:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise SystemExit("translate.py: unbalanced %s" % open_ch)


LAUNCH = re.compile(r"(\b[A-Za-z_]\w*(?:<[^<>;]*>)?)\s*<<<")
SHARED = re.compile(r"extern\s+__shared__\s+(\w+)\s+(\w+)\s*\[\s*\]\s*;")


def translate(src):
    src = SHARED.sub(lambda m: "%s *%s = (%s *)emu_dyn_smem();" % (m.group(1), m.group(2),
                                                                    m.group(1)), src)
    out, pos = [], 0
    while True:
        m = LAUNCH.search(src, pos)
        if not m:
            break
        end_cfg = src.index(">>>", m.end())
        cfg = src[m.end():end_cfg]
        i = end_cfg + 3
        while src[i].isspace():
            i += 1
        if src[i] != "(":
            raise SystemExit("translate.py: launch of %s without arguments" % m.group(1))
        j = matching(src, i, "(", ")")
        args = src[i:j]
        out.append(src[pos:m.start()])
        out.append('emu_launch(emu_cfg(%s), "%s", [&]() { %s%s; })' % (cfg, m.group(1), m.group(1),
                                                                     args))
        pos = j
    out.append(src[pos:])
    return "".join(out)


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    with open(sys.argv[1]) as f:
        text = f.read()
    with open(sys.argv[2], "w") as f:
        f.write('#line 1 "%s"\n' % sys.argv[1])
        f.write(translate(text))


if __name__ == "__main__":
    main()
