"""Extraction: the real Wikipedia sample, other input formats, offline Punkt, bad input."""
from __future__ import annotations

import bz2
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bertspeed.data_prep import sentences
from bertspeed.data_prep.extract import main as extract_main
from bertspeed.data_prep.wiki import clean_wikitext, iter_wiki_articles

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wiki_articles(wiki_dump):
    return list(iter_wiki_articles(str(wiki_dump)))


def test_real_wikipedia_dump_extracts_to_clean_text(wiki_articles, wiki_dump):
    raw = bz2.open(wiki_dump, "rt", encoding="utf-8").read()
    pages, redirects = raw.count("<page>"), raw.count("<redirect")
    assert len(wiki_articles) <= pages - redirects and len(wiki_articles) > 90
    titles = [t for t, _ in wiki_articles]
    assert "Anarchism" in titles and "AccessibleComputing" not in titles  # a redirect
    assert not any(":" in t.split(" ")[0] for t in titles)  # no Talk:/User:/File: pages
    for title, text in wiki_articles:
        for markup in ("{{", "}}", "[[", "]]", "<ref", "</ref", "&lt;", "&amp;nbsp", "[http"):
            assert markup not in text, (title, markup)
        assert len(text) > 50
    anarchism = dict(wiki_articles)["Anarchism"]
    assert anarchism.startswith("Anarchism is a political philosophy")


def test_clean_wikitext_drops_markup_keeps_link_text():
    text = ("'''Foo''' is a [[bar|Bar thing]] and a [[baz]].<ref>cite</ref>{{Infobox|x=1}} "
            "[[File:a.jpg|thumb|caption [[x]]]] [[Category:Things]] [http://e.org Example] &amp; more."
            "\n{| class=\"wikitable\"\n|-\n| cell\n|}\n== Heading ==\nNext &nbsp;paragraph.")
    out = clean_wikitext(text)
    assert out.startswith("Foo is a Bar thing and a baz. Example & more.")
    for junk in ("cite", "Infobox", "caption", "Things", "cell", "Heading", "thumb"):
        assert junk not in out
    assert out.endswith("Next paragraph.")


@pytest.fixture(scope="module")
def punkt_model(tmp_path_factory, wiki_articles):
    """Punkt trained offline on the real Wikipedia sample, cached as JSON."""
    params = sentences.train_punkt(iter(t for _, t in wiki_articles), sample_chars=3_000_000)
    path = tmp_path_factory.mktemp("punkt") / "punkt.json"
    sentences.save_params(params, path)
    return path, params


def test_punkt_trains_offline_and_round_trips_as_json(punkt_model):
    path, params = punkt_model
    json.loads(path.read_text())  # plain JSON, not pickle
    loaded = sentences.load_params(path)
    assert loaded.abbrev_types == params.abbrev_types and loaded.sent_starters == params.sent_starters
    assert dict(loaded.ortho_context) == dict(params.ortho_context)
    splitter = sentences.sentence_splitter(str(path))
    got = sentences.split_document(splitter, "Dr. Smith met Mr. Jones at 5 p.m. on Monday. They talked, "
                                             "e.g. about trains. It rained!\nA new paragraph starts here.")
    assert got == ["Dr. Smith met Mr. Jones at 5 p.m. on Monday.", "They talked, e.g. about trains.",
                   "It rained!", "A new paragraph starts here."]
    chinese = sentences.split_document(splitter, "北京是首都。上海很大！你去过吗？“好的。”他说。")
    assert chinese == ["北京是首都。", "上海很大！", "你去过吗？", "“好的。”他说。"]


def test_bad_punkt_file(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text("{\"abbrev_types\": 3}")
    with pytest.raises(ValueError, match="p.json"):
        sentences.load_params(bad)


def read_docs(out_dir):
    docs = []
    for path in sorted(out_dir.glob("text_*.txt")):
        docs += [d.split("\n") for d in path.read_text(encoding="utf-8").split("\n\n") if d.strip()]
    return docs


def test_formats_jsonl_books_text(tmp_path, punkt_model):
    story = ("The ship left the harbor at dawn. Its captain, Mr. Grey, watched the sky. "
             "Nobody spoke. ") * 40
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps({"text": story, "id": i}) for i in range(3)))
    books = tmp_path / "my books"
    books.mkdir()
    for i in range(2):
        (books / f"book{i}.txt").write_text(f"Chapter one.\n\n{story}\n\nThe end of book {i}.\n")
    (tmp_path / "plain.txt").write_text(f"{story}\n\nSecond document here. It is short.\n")
    punkt = punkt_model[0]
    args = ["--output_dir", str(tmp_path / "out"), "--num_shards", "2", "--punkt_model", str(punkt)]
    assert extract_main(["--input", str(tmp_path / "in.jsonl"), str(tmp_path / "plain.txt"), *args]) == 0
    assert extract_main(["--input", str(books), "--input_format", "books",
                         "--output_dir", str(tmp_path / "out_books"), "--punkt_model", str(punkt)]) == 0
    docs = read_docs(tmp_path / "out")
    assert len(docs) == 5
    assert docs[0][:3] == ["The ship left the harbor at dawn.", "Its captain, Mr. Grey, watched the sky.",
                           "Nobody spoke."]
    book_docs = read_docs(tmp_path / "out_books")
    assert len(book_docs) == 2 and book_docs[0][0] == "Chapter one." and book_docs[0][-1] == "The end of book 0."
    recorded = json.loads((tmp_path / "out" / "extract.json").read_text())["arguments"]
    assert recorded["input"] == [str(tmp_path / "in.jsonl"), str(tmp_path / "plain.txt")]
    assert (recorded["num_shards"], recorded["input_format"], recorded["punkt_model"]) == (2, "auto", str(punkt))


@pytest.mark.parametrize("extra, message", [
    (["--output_dir", "o", "--workers", "0"], "--workers must be at least 1, got 0"),
    (["--output_dir", "o", "--input_format", "pdf"], "argument --input_format: invalid choice: 'pdf'"),
    ([], "missing required setting(s) --output_dir"),
])
def test_bad_arguments_exit_2_naming_the_flag(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as info:
        extract_main(["--input", str(tmp_path), *extra])
    assert info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("name, content, message", [
    ("broken.xml.bz2", b"BZh91AY&SYgarbage", "broken.xml.bz2: not a readable Wikipedia XML dump"),
    ("notwiki.xml", b"<mediawiki><page><title>x</title>", "not a readable Wikipedia XML dump"),
    ("bad.jsonl", b'{"text": "ok"}\n{not json}\n', "bad.jsonl:2: invalid JSON"),
    ("field.jsonl", b'{"body": "ok"}\n', "no string field 'text'"),
    ("empty.txt", b"", "no documents"),
])
def test_bad_input_gives_clear_error(tmp_path, capsys, name, content, message):
    (tmp_path / name).write_bytes(content)
    out = tmp_path / "out"
    assert extract_main(["--input", str(tmp_path / name), "--output_dir", str(out), "--no_split"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not list(out.glob("text_*.txt"))


def extract_cmd(dump, out, workers=1):
    return [sys.executable, "-m", "bertspeed.data_prep.extract", "--input", str(dump), "--output_dir", str(out),
            "--num_shards", "3", "--no_split", "--docs_per_task", "2", "--checkpoint_every", "1",
            "--workers", str(workers)]


def test_extract_resumes_after_kill_and_ignores_worker_count(tmp_path, wiki_dump):
    out = tmp_path / "killed"
    proc = subprocess.Popen(extract_cmd(wiki_dump, out), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    progress = out / ".extract-progress.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if progress.exists() and json.loads(progress.read_text())["raw_docs"] >= 20:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(out.glob("text_*.txt"))  # nothing visible under a final name
    resumed_from = json.loads(progress.read_text())["raw_docs"]
    assert 20 <= resumed_from < 106
    assert subprocess.run(extract_cmd(wiki_dump, out), cwd=ROOT, capture_output=True).returncode == 0
    fresh = tmp_path / "fresh"
    assert subprocess.run(extract_cmd(wiki_dump, fresh, workers=2), cwd=ROOT,
                          capture_output=True).returncode == 0
    for i in range(3):
        name = f"text_{i:05d}.txt"
        assert (out / name).read_bytes() == (fresh / name).read_bytes()
    assert json.loads((out / "extract.json").read_text())["documents"] == 106
    assert not progress.exists()
