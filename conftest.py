# The project's root conftest: nothing to configure; the plugin is loaded by
# its pytest11 entry point (pip install -e .). Kept so that `pytest suites/...`
# and `pytest tests/...` share one rootdir.
