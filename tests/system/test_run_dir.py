

def test_upload_copies_the_run_directory_to_a_filesystem_uri(tmp_path):
    import pytest

    from system.run_dir import RunDir

    run = tmp_path / "runs" / "r1"
    (run / "replay" / "shard-0").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "replay" / "shard-0" / "wal-0.arrows").write_bytes(b"log")
    (run / "gateway_token").write_text("a-secret-token-0123456789\n")
    target = tmp_path / "bucket"
    assert RunDir(run).upload(f"file://{target}") == f"file://{target}/r1"
    assert (target / "r1" / "config.yaml").read_text() == "seed: 0\n"
    assert (target / "r1" / "replay" / "shard-0" / "wal-0.arrows").read_bytes() == b"log"
    assert not (target / "r1" / "gateway_token").exists(), "the gateway token must never be copied"
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

