"""The job parameters hpcproc records beside a recipe's own (ProcessingJobParameter keys).

ISPyB has no columns for these; their keys hold a dot, which no recipe parameter name has.
"""

from __future__ import annotations

# The job this one reprocesses (hpcproc.reprocess): ProcessingJob has no parent column.
REPROCESS_OF = "hpcproc.reprocess_of"
# "awaiting", then "approved by ..." or "rejected by ..." (hpcproc.approval).
APPROVAL = "hpcproc.approval"
AWAITING = "awaiting"
# "cancelled by <user> at <time>[: <reason>]", recorded once (hpcproc.cancel).
CANCEL = "hpcproc.cancel"
