"""DuckDB's fastest route to the `readings` table found (the anchor of bench_flatten and
bench_process): one typed `from_json` per payload (readings as MAPs of JSON values), then
`unnest(map_entries(...))`; value types from `json_type` of each value."""


def readings_sql(source: str, output: str, *, skip_bad: bool = False) -> str:
    """COPY the readings of the NDJSON raw records at `source` (a path or glob) to Parquet
    `output`; `skip_bad` leaves out payloads that are not the contract's JSON (real raw data),
    at the price of `try`."""
    payload = """from_json(payload, '{"t": "BIGINT", "r": "MAP(VARCHAR, JSON)[]"}')"""
    return f"""
copy (
    with src as (
        select split_part(topic, '/', 2) as site,
            {f"try({payload})" if skip_bad else payload} as p
        from read_ndjson('{source}', columns = {{topic: 'VARCHAR', payload: 'JSON'}})
    ),
    rd as (
        select site, to_timestamp(p.t) as time, unnest(p.r) as r from src
        {"where p.t is not null" if skip_bad else ""}
    ),
    kv as (
        select site, time, r['_vid'] ->> '$' as vid, r['_d'] ->> '$' as device,
            unnest(map_entries(r)) as e
        from rd
    )
    select site, time, vid, device, e.key as field,
        case when json_type(e.value) in ('BIGINT', 'UBIGINT', 'DOUBLE')
            then try_cast(e.value as double) end as value,
        case when json_type(e.value) in ('VARCHAR', 'BOOLEAN') then e.value ->> '$' end as value_text
    from kv
    where not starts_with(e.key, '_') and json_type(e.value) <> 'NULL' and vid is not null
) to '{output}' (format parquet, compression zstd)
"""
