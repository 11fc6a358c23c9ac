"""The bottom layer every app may use and that uses none of them: secret redaction, the base
class of errors from outside systems, the ownership marker we put on things outside the
database, shared vocabularies and the admin display helpers. No models, no business rules."""
