"""What the span store tells the apps above it.

``spans_stored`` is sent inside the storing transaction, once per batch, after the spans and
their traces' summaries are written, with the rows that were new (duplicates already dropped):

* ``team`` (a ``Team``), ``rows`` (dicts with the ``Span`` columns, ``cost`` included), ``now``;
* ``before``: for each trace of the batch that had a summary row already, what it said before
  this batch — ``(span_count, agent_id, agent_key, agent_name)``. A trace missing from it was
  started by this batch.

A receiver that fails rolls the batch back, so what it derives (cost rollups, for one) is never
out of step with the spans.
"""

from __future__ import annotations

from django.dispatch import Signal

# trace id → (span_count, agent_id, agent_key, agent_name) before the batch
TraceBefore = tuple[int, int | None, str, str]

spans_stored = Signal()
