from __future__ import annotations

from django import forms

from diagnosis.models import Label, Site, Subtype, TrainingJob, Unusable


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
        # An empty file reaches the service, which refuses it by name with the others.
        allow_empty_file=True,
        widget=MultipleFileInput(attrs={"accept": "image/jpeg,image/png,application/dicom,.dcm"}),
        help_text="Chest X-rays as JPEG, PNG or DICOM; select several files at once if you like.",
    )
    site = forms.ModelChoiceField(
        queryset=Site.objects.all(),
        to_field_name="name",
        required=False,
        empty_label="default site",
        help_text="Where the images come from: that site's threshold decides.",
    )


class ReviewForm(forms.Form):
    label = forms.ChoiceField(choices=Label.choices, widget=forms.RadioSelect, required=False)
    subtype = forms.ChoiceField(
        choices=[("", "not given"), *Subtype.choices],
        widget=forms.RadioSelect,
        required=False,
        label="If pneumonia",
    )
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
        if data.get("subtype") and data.get("label") != Label.PNEUMONIA:
            raise forms.ValidationError("A subtype goes with the label Pneumonia only.")
        return data


class RetrainForm(forms.Form):
    """Start a retraining job (admins, models page). Empty fields keep retrain's defaults."""

    init = forms.ChoiceField(choices=TrainingJob.Init.choices, initial=TrainingJob.Init.ACTIVE)
    freeze_epochs = forms.IntegerField(min_value=0, max_value=50, required=False)
    epochs = forms.IntegerField(min_value=0, max_value=50, required=False)
    limit_per_class = forms.IntegerField(
        min_value=1, required=False, help_text="At most this many base images per class."
    )
    clean = forms.BooleanField(
        required=False, initial=True, label="Rank the pool for cleaning first"
    )

    def job_arguments(self) -> dict:
        data = self.cleaned_data
        keys = ("freeze_epochs", "epochs", "limit_per_class")
        parameters = {k: data[k] for k in keys if data[k] is not None} | {"clean": data["clean"]}
        return {"init": data["init"], "parameters": parameters}
