#!/usr/bin/env perl
# bench/compare-simple.pl: the Mojolicious::Lite side, same two routes and the
# same response bytes as apps/simple-hello.pl (the content type is set
# explicitly because Mojolicious would spell it "charset=UTF-8" otherwise).
# Run: perl bench/apps/simple-hello-mojo.pl daemon -m production -l http://127.0.0.1:5000
use Mojolicious::Lite -signatures;

get '/' => sub ($c) {
    $c->res->headers->content_type('text/plain; charset=utf-8');
    $c->render(data => 'Hello, World!');
};
get '/users/:id' => sub ($c) {
    $c->res->headers->content_type('application/json; charset=utf-8');
    $c->render(json => { user_id => $c->param('id') });
};

app->start;
