from __future__ import annotations

from django import forms

from diagnosis.models import Label, Unusable


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
    label = forms.ChoiceField(choices=Label.choices, widget=forms.RadioSelect, required=False)
    unusable_reason = forms.ChoiceField(
        choices=[("", "usable for training"), *Unusable.choices],
        required=False,
        label="Image",
    )
    note = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)

    def clean(self):
        data = super().clean()
        if not data.get("label") and not data.get("unusable_reason"):
            raise forms.ValidationError("Choose a label, or say why the image is unusable.")
        return data
