"""Where ``ScanInfo`` lived before :mod:`hpcproc.scaninfo` (kept so that records written by
earlier versions, which name their classes by module, still decode)."""

from hpcproc.scaninfo import SCAN_FIELDS, DatasetInfo, ScanInfo

__all__ = ["SCAN_FIELDS", "DatasetInfo", "ScanInfo"]
