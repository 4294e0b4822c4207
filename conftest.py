"""Repository-level test settings: pytester for plugin tests; markers are declared in pyproject.toml."""

pytest_plugins = ["pytester"]
