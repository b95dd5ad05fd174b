"""Change notices as sent: task ids, queues, names, and whether a webhook may be due."""

from __future__ import annotations

from krolik.results.notices import TaskChange, decode_changes, encode_changes


def test_a_notice_says_which_changes_may_have_ended_a_task_with_a_webhook() -> None:
    changes = [TaskChange(1, "default", "echo"), TaskChange(2, "mail", "send", webhook=True)]
    body = encode_changes(changes)
    assert body == b'[[1,"default","echo"],[2,"mail","send",1]]'
    assert decode_changes(body) == changes


def test_a_notice_of_an_older_process_reads_as_no_webhook() -> None:
    assert decode_changes(b'[[7,"q","n"]]') == [TaskChange(7, "q", "n", webhook=False)]


def test_a_body_that_is_no_notice_gives_no_change() -> None:
    for body in (b"", b"{}", b"[[1]]", b'[["x","q","n"]]', b"not json"):
        assert decode_changes(body) == []
