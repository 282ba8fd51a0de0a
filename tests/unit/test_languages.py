"""jobs.languages: a model that reads English says so when a text is not."""

from jobs.languages import unread


def test_chinese_for_an_english_model_is_said_and_english_is_not() -> None:
    said = unread(["我要杀了你"], languages=["en"], model="all-MiniLM-L6-v2")
    assert said is not None and "Han script" in said and "100%" in said and "all-MiniLM-L6-v2 reads en" in said
    assert unread(["I will hurt you"], languages=["en"], model="m") is None
    assert unread(["the 股市 fell sharply today on rate fears"], languages=["en"], model="m") is None  # mostly English
    assert unread(["我要杀了你"], languages=["zh", "en"], model="m") is None
    assert unread(["Привет, как дела"], languages=["en"], model="m") is not None
    assert unread(["12345 !!!"], languages=["en"], model="m") is None  # no letters: nothing to say
