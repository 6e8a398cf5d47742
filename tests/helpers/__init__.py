"""What the tests share besides fixtures (those are in ``conftest.py``): the real data sets, fixture
models, a local S3, runs paced by the test, and the serving helpers."""
