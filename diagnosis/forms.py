from __future__ import annotations

from django import forms

from diagnosis.models import Label


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleImageField(forms.FileField):
    """A file field that accepts several files; validation of the images is the service's."""

    def clean(self, data, initial=None):
        single = super().clean
        if isinstance(data, list | tuple):
            return [single(item, initial) for item in data]
        return [single(data, initial)]


class UploadForm(forms.Form):
    images = MultipleImageField(
        widget=MultipleFileInput(attrs={"accept": "image/jpeg,image/png"}),
        help_text="Chest X-rays as JPEG or PNG; select several files at once if you like.",
    )


class ReviewForm(forms.Form):
    label = forms.ChoiceField(choices=Label.choices, widget=forms.RadioSelect)
    note = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
