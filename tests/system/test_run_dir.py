

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
