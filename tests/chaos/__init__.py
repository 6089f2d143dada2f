"""The chaos suite: thousands of workflows under injected faults.

``python -m tests.chaos.harness --workflows 3000 --workers 4 --seed 1`` (``make
chaos``) runs it; ``tests/test_chaos.py`` runs a shortened version. See
:mod:`tests.chaos.harness` for what is injected and what is checked.
"""
