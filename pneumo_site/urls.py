from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from diagnosis.auth import throttle_login

admin.site.login = throttle_login(admin.site.login)

urlpatterns = [
    # Browsers ask for it on pages that name no icon (the admin, the API's JSON).
    path("favicon.ico", RedirectView.as_view(url=static("diagnosis/favicon.svg"), permanent=True)),
    path("admin/", admin.site.urls),
    path("accounts/login/", throttle_login(auth_views.LoginView.as_view()), name="login"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/", include("diagnosis.api.urls")),
    path("", include("diagnosis.urls")),
]
