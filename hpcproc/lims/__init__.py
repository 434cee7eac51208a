"""The LIMS adapter: hpcproc's scans, jobs and steps recorded in ISPyB (SQLite or MariaDB)."""

from hpcproc.lims.adapter import Lims, default_lims_url, parse_visit
from hpcproc.lims.records import (
    AttachmentRecord,
    JobRecord,
    JobSummary,
    MessageRecord,
    ProgramRecord,
    overall_status,
)

__all__ = [
    "AttachmentRecord",
    "JobRecord",
    "JobSummary",
    "Lims",
    "MessageRecord",
    "ProgramRecord",
    "default_lims_url",
    "overall_status",
    "parse_visit",
]
