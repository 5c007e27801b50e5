

def test_upload_copies_the_run_directory_to_a_filesystem_uri(tmp_path):
    import pytest

    from system.run_dir import RunDir

    run = tmp_path / "runs" / "r1"
    (run / "replay" / "shard-0").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "replay" / "shard-0" / "wal-0.arrows").write_bytes(b"log")
    (run / "gateway_token").write_text("a-secret-token-0123456789\n")
    (run / ".metrics-rows").mkdir()  # a driver's working files
    target = tmp_path / "bucket"
    assert RunDir(run).upload(f"file://{target}") == f"file://{target}/r1"
    assert (target / "r1" / "config.yaml").read_text() == "seed: 0\n"
    assert (target / "r1" / "replay" / "shard-0" / "wal-0.arrows").read_bytes() == b"log"
    assert not (target / "r1" / "gateway_token").exists(), "the gateway token must never be copied"
    assert not (target / "r1" / ".metrics-rows").exists()
    with pytest.raises(ValueError, match=r"run.upload_to='nope://x': expected a filesystem URI"):
        RunDir(run).upload("nope://x")


def test_table_rows_in_chunks_write_the_table_of_the_rows(tmp_path):
    import pyarrow.parquet as pq

    from system.run_dir import RunDir, TableRows

    rows = [{"env_steps": i, "rate": float("nan") if i % 3 == 0 else i / 2} for i in range(10)]
    rows[4]["policy_loss"] = 1.5  # a column that first appears later
    rows[7]["rate"] = 7  # an int where the chunk before had floats
    chunked = TableRows(chunk_rows=3)
    for row in rows:
        chunked.append(row)
    assert len(chunked) == 10
    run_dir = RunDir(tmp_path)
    run_dir.write_table("chunked", chunked)
    run_dir.write_table("whole", rows)
    chunked_rows = pq.read_table(tmp_path / "chunked.parquet").to_pylist()
    assert chunked_rows == pq.read_table(tmp_path / "whole.parquet").to_pylist()
    assert chunked_rows[3] == {"env_steps": 3, "rate": None, "policy_loss": None}
    assert chunked_rows[4]["policy_loss"] == 1.5 and chunked_rows[7]["rate"] == 7



def test_table_rows_spill_to_parts_on_disk_and_write_the_same_table(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from system.run_dir import RunDir, TableRows

    rows = [{"env_steps": i, "rate": float("nan") if i % 3 == 0 else i / 2} for i in range(10)]
    rows[4]["policy_loss"] = 1.5
    rows[7]["rate"] = 7
    spill = tmp_path / ".metrics-rows"
    spill.mkdir()
    (spill / "part-000000.parquet").write_bytes(b"an earlier driver's part")
    spilled = TableRows(spill, chunk_rows=3)
    assert list(spill.iterdir()) == [], "parts of an earlier driver are not this one's"
    spilled.extend(pa.table({"env_steps": [-2, -1], "rate": [0.5, None]}))  # a resumed run's rows
    for row in rows:
        spilled.append(row)
    assert len(spilled) == 12
    assert len(list(spill.glob("part-*.parquet"))) == 4, "every sealed chunk waits on disk, only the newest in memory"
    run_dir = RunDir(tmp_path)
    run_dir.write_table("spilled", spilled)
    written = pq.read_table(tmp_path / "spilled.parquet").to_pylist()
    assert written[:2] == [{"env_steps": -2, "rate": 0.5, "policy_loss": None},
                           {"env_steps": -1, "rate": None, "policy_loss": None}]
    run_dir.write_table("whole", rows)
    assert written[2:] == pq.read_table(tmp_path / "whole.parquet").to_pylist()
    spilled.close()
    assert not spill.exists()
    assert (tmp_path / "spilled.parquet").is_file()
