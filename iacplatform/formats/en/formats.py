"""Date formats for the admin (and any template): ISO 8601 order, to the second, with the zone.
Django's English default ("Dec. 1, 2026, 9:30 a.m.") stops at minutes, too coarse for leases,
heartbeats and job ticks that move every few seconds."""

DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
