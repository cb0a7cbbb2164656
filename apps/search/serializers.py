from __future__ import annotations

from typing import Any

from rest_framework import serializers


class SearchQuerySerializer(serializers.Serializer[Any]):
    q = serializers.CharField(min_length=1, max_length=500, help_text="What to look for, in words.")
    limit = serializers.IntegerField(min_value=1, max_value=100, default=20)
    mode = serializers.ChoiceField(
        choices=["auto", "semantic", "fulltext"],
        default="auto",
        help_text="auto: by meaning when embeddings exist, else full-text search.",
    )

    def validate_q(self, value: str) -> str:
        if "\x00" in value or any("\ud800" <= ch <= "\udfff" for ch in value):
            raise serializers.ValidationError("q must not contain NUL characters or lone surrogates.")
        return value


class SearchResultSerializer(serializers.Serializer[Any]):
    workspace = serializers.CharField()
    address = serializers.CharField()
    type = serializers.CharField()
    score = serializers.FloatField(help_text="Cosine similarity (semantic) or ts_rank_cd (full text).")


class SearchAnswerSerializer(serializers.Serializer[Any]):
    mode = serializers.ChoiceField(choices=["semantic", "fulltext"])
    model = serializers.CharField(help_text="The embedding model (name@version); empty for full text.")
    results = SearchResultSerializer(many=True)
