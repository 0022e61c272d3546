"""The visitor, first-party: cookies, click ids, CORS, the identity cookie, geography, match keys."""
