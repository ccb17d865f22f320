"""The teams' web pages, served by the gateway: the public leaderboard and competition page, and each
team's own pages (signed in with its token, a session cookie), live through server-sent events."""
