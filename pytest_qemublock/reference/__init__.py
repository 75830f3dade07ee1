"""The expected-behaviour reference (docs/expectations.md): the rules of expectations/ as tables."""
