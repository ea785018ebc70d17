"""S3 inputs and outputs against a real S3-compatible server (moto) on 127.0.0.1, with IAM auth on."""
from __future__ import annotations

import gzip
import json

import pytest

from bertspeed.data_prep import schema
from bertspeed.data_prep.create_pretraining_data import main as create_main
from bertspeed.data_prep.extract import main as extract_main

SECRET_MARK = "s3cr3t-never-print-me"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    pytest.importorskip("moto")
    boto3 = pytest.importorskip("boto3")
    import requests
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    mp = pytest.MonkeyPatch()
    mp.setenv("AWS_ENDPOINT_URL", endpoint)
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mp.setenv("AWS_ACCESS_KEY_ID", "setup")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "setup")
    iam = boto3.session.Session().client("iam", endpoint_url=endpoint)
    iam.create_user(UserName="prep")
    iam.put_user_policy(UserName="prep", PolicyName="s3", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="prep")["AccessKey"]
    client = boto3.session.Session().client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="corpus")
    client.create_bucket(Bucket="shards")
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0")  # from now on credentials are checked
    mp.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    mp.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    yield boto3.session.Session().client("s3", endpoint_url=endpoint), key
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"1000000000")
    mp.undo()
    server.stop()


@pytest.fixture(scope="module")
def text(squad_dev) -> bytes:
    data = json.loads(squad_dev.read_text(encoding="utf-8"))["data"][:6]
    docs = ["\n".join(p["context"].replace(". ", ".\n").splitlines()) for a in data for p in a["paragraphs"]]
    return "\n\n".join(docs).encode()


def test_s3_in_and_out_matches_local_run(s3, text, tmp_path, vocab_file):
    client, _ = s3
    client.put_object(Bucket="corpus", Key="text/a.txt.gz", Body=gzip.compress(text[: len(text) // 2]))
    client.put_object(Bucket="corpus", Key="text/b.txt", Body=text[len(text) // 2:])
    local_in = tmp_path / "in"
    local_in.mkdir()
    (local_in / "a.txt.gz").write_bytes(gzip.compress(text[: len(text) // 2]))
    (local_in / "b.txt").write_bytes(text[len(text) // 2:])
    common = ["--vocab_file", str(vocab_file), "--num_shards", "2", "--random_seed", "3"]
    assert create_main(["--input", "s3://corpus/text/", "--output_dir", "s3://shards/run1", *common]) == 0
    assert create_main(["--input", str(local_in), "--output_dir", str(tmp_path / "local"), *common]) == 0
    remote = json.loads(client.get_object(Bucket="shards", Key="run1/manifest.json")["Body"].read())
    local = json.loads((tmp_path / "local" / schema.MANIFEST).read_text())
    assert [s["sha256"] for s in remote["shards"]] == [s["sha256"] for s in local["shards"]]
    for shard in remote["shards"]:
        body = client.get_object(Bucket="shards", Key=f"run1/{shard['file']}")["Body"].read()
        assert body == (tmp_path / "local" / shard["file"]).read_bytes()
    # a rerun finds everything finished
    assert create_main(["--input", "s3://corpus/text/", "--output_dir", "s3://shards/run1", *common]) == 0


def test_extract_from_and_to_s3(s3, text, tmp_path):
    client, _ = s3
    lines = "\n".join(json.dumps({"text": t}) for t in text.decode().split("\n\n"))
    client.put_object(Bucket="corpus", Key="docs.jsonl", Body=lines.encode())
    assert extract_main(["--input", "s3://corpus/docs.jsonl", "--output_dir", "s3://shards/text",
                         "--no_split", "--num_shards", "2"]) == 0
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="shards", Prefix="text/")["Contents"]}
    assert {"text/text_00000.txt", "text/text_00001.txt", "text/extract.json"} <= keys


def test_missing_bucket_and_bad_credentials(s3, tmp_path, vocab_file, capsys, monkeypatch):
    client, _ = s3
    client.put_object(Bucket="corpus", Key="one.txt", Body=b"Hello there.\nGeneral Kenobi.\n")
    args = ["--vocab_file", str(vocab_file)]
    assert create_main(["--input", "s3://corpus/one.txt", "--output_dir", "s3://no-such-bucket/x", *args]) == 2
    assert "s3://no-such-bucket: bucket does not exist" in capsys.readouterr().err
    assert create_main(["--input", "s3://no-such-bucket/in/", "--output_dir", str(tmp_path), *args]) == 2
    assert "s3://no-such-bucket/in/: S3 error NoSuchBucket" in capsys.readouterr().err
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_MARK)
    assert create_main(["--input", "s3://corpus/one.txt", "--output_dir", str(tmp_path / "o"), *args]) == 2
    captured = capsys.readouterr()
    assert "bad credentials" in captured.err
    assert SECRET_MARK not in captured.err + captured.out and "AKIAWRONG" not in captured.err
