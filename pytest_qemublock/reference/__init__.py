"""The expected-behaviour reference (docs/behaviour.md): the rules of expectations/ as tables."""
