"""The run recorder's choice of the best epoch (ties of a saturated validation metric)."""

from __future__ import annotations

import math

from medlens.engine.callbacks import RunRecorder


def _recorder(monitor="val_auc", mode="max") -> RunRecorder:
    return RunRecorder("unused", card=None, monitor=monitor, mode=mode, tracker=None)


def _take(recorder: RunRecorder, epoch: int, value: float, loss: float) -> bool:
    """One epoch's monitored value and val loss, through the recorder's own bookkeeping."""
    recorder.rows.append({"epoch": epoch, "val_loss": loss, recorder.monitor: value})
    return recorder._consider(epoch, value, loss)


def test_an_equal_auc_at_a_lower_val_loss_is_the_new_best():
    recorder = _recorder()
    # A 30-image validation split: AUC 1.0 from epoch 1 on, while the loss keeps falling, then rises.
    for epoch, (auc, loss) in enumerate([(0.9, 0.8), (1.0, 0.5), (1.0, 0.3), (1.0, 0.4), (0.95, 0.2)]):
        _take(recorder, epoch, auc, loss)
    assert recorder.best_epoch == 2 and recorder.best_score == 1.0 and recorder.best_loss == 0.3
    # A higher AUC still wins whatever its loss; a NaN loss never wins a tie.
    assert recorder._better(1.01, 9.0) and not recorder._better(1.0, math.nan) and not recorder._better(1.0, 0.3)


def test_val_loss_as_the_monitor_keeps_the_earlier_of_equal_losses():
    recorder = _recorder("val_loss", "min")
    for epoch, loss in enumerate([0.5, 0.4, 0.4]):
        _take(recorder, epoch, loss, loss)
    assert recorder.best_epoch == 1


def test_a_resume_state_from_before_the_tie_break_takes_the_best_rows_loss():
    recorder = _recorder()
    rows = [{"epoch": 0, "val_loss": 0.7, "val_auc": 0.8}, {"epoch": 1, "val_loss": 0.6, "val_auc": 1.0}]
    recorder.load_state_dict({"rows": rows, "best_score": 1.0, "best_epoch": 1})
    assert recorder.best_loss == 0.6
    recorder.load_state_dict({**recorder.state_dict(), "best_loss": 0.25})
    assert recorder.best_loss == 0.25
