#!/usr/bin/env perl
# Mojolicious's WebSocket echo, the comparison in bench/ws-echo.pl: every
# message comes back (as a text frame: `send` of a plain string sends text,
# which is all the bench sends). Plain HTTP gets 404.
# Run: perl bench/apps/ws-echo-mojo.pl daemon -m production -l http://127.0.0.1:5000
use Mojolicious::Lite -signatures;

websocket '/' => sub {
    my $c = shift;
    $c->on(message => sub { my ($c, $msg) = @_; $c->send($msg) });
};

app->start;
