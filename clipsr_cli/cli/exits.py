"""Exit statuses of ``clipsr`` (documented in the README)."""

EXIT_OK = 0
EXIT_ERROR = 1  # one line on stderr (``-v`` adds the traceback)
EXIT_USAGE = 2  # unknown option or a value that can never work
EXIT_PARTIAL = 3  # ``batch``: some files failed
EXIT_INTERRUPTED = 130  # Ctrl-C
