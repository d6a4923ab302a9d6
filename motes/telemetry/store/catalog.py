"""In-memory mirror of a store's catalog: measurements, their fields and their series.

The catalog lives in the store's own tables (so it commits with the data it describes);
this mirror answers the hot-path questions — which column holds a field, which id a tag
set has — without a round trip. It is rebuilt from the tables at start and after a failed
transaction (into a new object, swapped in whole), never patched by guesswork.

Only the writer thread changes it; readers on other threads see a measurement or field
only once ``committed`` is set, after the COMMIT that created its table or column, so a
query never names a table or column its snapshot lacks. A new series becomes visible with
its latest-value slot already registered; before its commit it simply has no rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from motes.telemetry.models import FieldType, parse_tagset
from motes.telemetry.store.protocol import SeriesInfo


@dataclass
class FieldInfo:
    name: str
    type: FieldType
    column: str
    committed: bool = True


@dataclass
class MeasurementInfo:
    bucket: str
    name: str
    table: str
    fields: dict[str, FieldInfo] = field(default_factory=dict)
    series: dict[str, int] = field(default_factory=dict)  # tagset -> series id
    # tag key -> value -> series ids, so a tag filter needs no scan of every series
    index: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    committed: bool = True

    def next_column(self) -> str:
        return f"c{len(self.fields)}"

    def visible_fields(self) -> list[FieldInfo]:
        """Fields whose column exists for readers (list() copies atomically under the GIL)."""
        return [f for f in list(self.fields.values()) if f.committed]


@dataclass
class Catalog:
    measurements: dict[tuple[str, str], MeasurementInfo] = field(default_factory=dict)
    series_info: dict[int, SeriesInfo] = field(default_factory=dict)
    next_series_id: int = 1
    next_table: int = 1

    def measurement(self, bucket: str, name: str) -> MeasurementInfo | None:
        return self.measurements.get((bucket, name))

    def visible_measurement(self, bucket: str, name: str) -> MeasurementInfo | None:
        m = self.measurements.get((bucket, name))
        return m if m is not None and m.committed else None

    def add_measurement(self, bucket: str, name: str) -> MeasurementInfo:
        info = MeasurementInfo(
            bucket=bucket, name=name, table=f"m{self.next_table}", committed=False
        )
        self.next_table += 1
        self.measurements[(bucket, name)] = info
        return info

    def allocate_series_id(self) -> int:
        sid = self.next_series_id
        self.next_series_id += 1
        return sid

    def register_series(self, m: MeasurementInfo, sid: int, tagset: str) -> None:
        # info first, then the tag-set map readers search: a reader never finds an id
        # it cannot describe
        info = self.series_info[sid] = SeriesInfo(
            id=sid, bucket=m.bucket, measurement=m.name, tags=parse_tagset(tagset)
        )
        for key, value in info.tags.items():
            m.index.setdefault(key, {}).setdefault(value, []).append(sid)
        m.series[tagset] = sid
        self.next_series_id = max(self.next_series_id, sid + 1)

    def matching_series(
        self, bucket: str, measurement: str | None, tags: dict[str, list[str]]
    ) -> list[SeriesInfo]:
        """Series in a bucket (optionally one measurement) whose tags take accepted values."""
        found: list[SeriesInfo] = []
        for (b, name), m in list(self.measurements.items()):
            if b != bucket or (measurement is not None and name != measurement):
                continue
            if not m.committed:
                continue
            found.extend(self.series_info[sid] for sid in _matching_ids(m, tags))
        return found

    def bucket_tables(self, bucket: str) -> list[MeasurementInfo]:
        """Committed measurements of a bucket."""
        return [m for (b, _), m in list(self.measurements.items()) if b == bucket and m.committed]


def _matching_ids(m: MeasurementInfo, tags: dict[str, list[str]]) -> list[int]:
    if not tags:
        return sorted(list(m.series.values()))
    chosen: set[int] | None = None
    for key, values in tags.items():
        by_value = m.index.get(key, {})
        ids = {sid for v in values for sid in list(by_value.get(v, ()))}
        chosen = ids if chosen is None else chosen & ids
        if not chosen:
            return []
    return sorted(chosen or ())
