from __future__ import annotations

from django.contrib import admin

from apps.pglayer.models import GroupMembership, Message
from iacplatform.estimates import BoundedCountPaginator


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    # Tables that grow with history: counts read at most 10,000 rows (iacplatform/estimates.py).
    paginator = BoundedCountPaginator
    show_full_result_count = False
    list_display = ("id", "channel", "expires")
    search_fields = ("channel",)
    exclude = ("body",)

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(GroupMembership)
class GroupMembershipAdmin(admin.ModelAdmin):
    # Tables that grow with history: counts read at most 10,000 rows (iacplatform/estimates.py).
    paginator = BoundedCountPaginator
    show_full_result_count = False
    list_display = ("group", "channel", "expires")
    search_fields = ("group", "channel")

    # Memberships are the consumers' (group_add / group_discard); a hand-made one would receive
    # for a channel nobody reads.
    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False
