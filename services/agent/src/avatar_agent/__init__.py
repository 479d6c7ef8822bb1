"""The voice agent. So far: the streaming tag parser its text nodes will share."""
