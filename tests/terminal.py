"""ckpt on a pseudo-terminal, and the screen a terminal would show after its output (progress lines)."""
import os
import pty
import select
import subprocess


def run_on_terminal(argv, term, timeout=120):
    """`argv` with stdout and stderr on one pseudo-terminal, as in an interactive shell: (exit status, output).

    TERM is set to `term` and NO_COLOR removed, so the caller decides whether escape sequences are allowed."""
    master, slave = pty.openpty()
    env = dict(os.environ, TERM=term)
    env.pop("NO_COLOR", None)
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    output = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                p.kill()
                raise AssertionError("no output for %d s from %s" % (timeout, argv))
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(master)
    return p.wait(timeout=timeout), output.decode()


def terminal_screen(output):
    """The lines a terminal shows after `output`: \\r returns to the line's start, ESC [K erases to its end,
    characters overwrite what is under them."""
    lines, line, column, i = [], [], 0, 0
    while i < len(output):
        if output.startswith("\x1b[K", i):
            del line[column:]
            i += 3
            continue
        c = output[i]
        if c == "\r":
            column = 0
        elif c == "\n":
            lines.append("".join(line))
            line, column = [], 0
        else:
            if column < len(line):
                line[column] = c
            else:
                line.append(c)
            column += 1
        i += 1
    if line:
        lines.append("".join(line))
    return lines
