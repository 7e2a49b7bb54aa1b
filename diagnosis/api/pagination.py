from __future__ import annotations

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination


class Pagination(PageNumberPagination):
    """?page=N&page_size=M (1-500; default API_PAGE_SIZE). A page_size that is not a whole
    number in that range answers 400 rather than being silently replaced by the default."""

    page_size_query_param = "page_size"
    max_page_size = 500
    page_size_query_description = (
        f"Results per page, 1 to {max_page_size} (default: the server's API_PAGE_SIZE, 50)."
    )

    def get_page_size(self, request):
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not raw.isdigit() or not 1 <= int(raw) <= self.max_page_size:
            raise ValidationError(
                {"page_size": [f"A whole number from 1 to {self.max_page_size}, got {raw!r}."]}
            )
        return int(raw)
