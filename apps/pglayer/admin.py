from __future__ import annotations

from django.contrib import admin

from apps.pglayer.models import GroupMembership, Message


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("id", "channel", "expires")
    search_fields = ("channel",)
    exclude = ("body",)

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(GroupMembership)
class GroupMembershipAdmin(admin.ModelAdmin):
    list_display = ("group", "channel", "expires")
    search_fields = ("group", "channel")
