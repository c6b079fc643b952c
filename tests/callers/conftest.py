# These tests import cinder or nova: they run inside the caller venvs, with
# unittest, through tools/run-caller-tests.sh, never under the project's
# pytest (whose venv has neither caller).
collect_ignore_glob = ['*.py']
