"""The `dynamostore` command line: `main.py` parses and dispatches; one module per command group (`node`,
`kv`, `admin`, `status`), and `localcluster` behind `dynamostore cluster`."""

from dynamostore.cli.main import main

__all__ = ["main"]
