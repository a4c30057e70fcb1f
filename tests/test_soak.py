"""The fault soak, bounded: ~2,000 requests, 2 worker processes killed at random, a sandbox
failing before and after doing the work (gateway 502/504/500, dropped answers, garbled 200s).
Checked from the sandbox's own record; ``scripts/soak`` runs the same at 10,000."""

from __future__ import annotations

import pytest

from sqlbridge import soak


@pytest.mark.slow
def test_fault_soak_loses_nothing_and_never_delivers_a_send_twice(tmp_path) -> None:
    report = soak.run(2000, seed=11, directory=str(tmp_path), budget=300)
    print("\n".join(report.lines()))
    assert report.kills >= 3  # the run really was interrupted
    assert report.vendor_processed > report.requests * 0.9
    assert report.lost == 0
    assert report.duplicate_sends_outside_uncertain == 0
    assert report.succeeded_sends_never_delivered == 0
    assert report.stuck_processing == 0
    # The faults after processing really happened, and were caught.
    assert report.uncertain_sends_delivered > 0
