"""Entry point of a worker process started by tests.support.procs (python -m ...)."""
from __future__ import annotations

import importlib
import json
import sys


def main() -> int:
    target = sys.argv[1]
    args = json.loads(sys.stdin.readline())
    import django

    django.setup()
    from django.db import connection

    connection.ensure_connection()
    module_name, func_name = target.rsplit(".", 1)
    func = getattr(importlib.import_module(module_name), func_name)
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        return 3
    result = func(**args)
    print("RESULT " + json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
