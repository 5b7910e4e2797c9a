"""``python -m seglearn COMMAND [key=value ...]``: run one command (same as ``seglearn-COMMAND``).

Commands: train, predict, preprocess, benchmark, characterise, tofsims, synth, suggest, ct; the
arguments are Hydra overrides of ``configs/COMMAND.yaml`` (``--help`` lists a command's config).
"""

from __future__ import annotations

import sys

from seglearn.commands import COMMANDS, entry_point


def main(argv: list[str] | None = None) -> None:
    """Pop the command name off ``sys.argv`` and call its entry point with the remaining overrides."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr if args and args[0] not in ("-h", "--help") else sys.stdout)
        if args and args[0] not in ("-h", "--help"):
            print(f"seglearn: error: unknown command {args[0]!r}; expected one of {', '.join(COMMANDS)}",
                  file=sys.stderr)
            sys.exit(2)
        return
    sys.argv = [f"seglearn-{args[0]}", *args[1:]]
    entry_point(args[0])()


if __name__ == "__main__":
    main()
