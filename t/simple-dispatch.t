# PAGI::Simple's request dispatch when nothing is ready at once: a body that
# arrives later and in pieces, a server that holds back the response start,
# a handler that returns a pending Future, errors thrown before and after
# the response, hooks and middleware returning nothing. The usual request finishes without waiting (no async frame
# is used then, see PAGI::Simple::_http); these are the other paths, driven
# with a $receive and $send whose Futures the test completes by hand, which
# a real socket cannot time. The socket tests (simple-*.t) cover the rest.
use strict;
use warnings;
use Test::More;
use Future;
use Future::AsyncAwait;
use PAGI::Simple;

local $SIG{ALRM} = sub { die "timed out\n" };
alarm 30;

my @after;
my $gate;    # a pending Future a handler waits on
my $app = PAGI::Simple->new(name => 'dispatch', max_body_size => 100);
$app->get('/' => sub ($c) { $c->text('Hello, World!') });
$app->post('/echo' => sub ($c) { $c->json({ got => $c->json_body }) });
$app->get('/later' => async sub ($c) { my $v = await $gate; await $c->text("later $v") });
$app->get('/die' => sub ($c) { die "broken\n" });
$app->get('/gone' => sub ($c) { $c->error(410, 'moved on') });
$app->get('/silent' => sub ($c) { return });
$app->get('/die-after-send' => sub ($c) { $c->text('sent'); die "after\n" });
my $pagi = $app->to_app;

# $receive hands out @events in order: each is a Future (pending ones the
# test completes) or a hashref (done at once). $send records every event
# and answers with $send_answer, a Future or undef for done.
my ($send_answer, @sent, $receives);
sub run_app {
    my ($scope, @events) = @_;
    @sent = ();
    $receives = 0;
    my $receive = sub {
        $receives++;
        my $e = shift @events // { type => 'http.disconnect' };
        return ref $e eq 'HASH' ? Future->done($e) : $e;
    };
    my $send = sub { push @sent, $_[0]; return $send_answer // Future->done };
    my $f = $pagi->({ type => 'http', method => 'GET', path => '/', headers => [], %$scope }, $receive, $send);
    return $f;
}
sub response {
    my ($start, @body) = @sent;
    return join ' ', $start->{status}, join '', map { $_->{body} // '' } @body;
}

# The usual request: done as soon as the app returns.
my $f = run_app({}, { type => 'http.request', body => '', more => 0 });
ok($f->is_done, 'hello: the app Future is done when the app returns');
is(response(), '200 Hello, World!', 'hello: the response');
is_deeply([ map { $_->{type} } @sent ], [ 'http.response.start', 'http.response.body' ], 'start then one body');

# A body that is not there yet and comes in two pieces.
my $first = Future->new;
$f = run_app({ method => 'POST', path => '/echo', headers => [ [ 'content-type', 'application/json' ] ] },
    $first, { type => 'http.request', body => '[1,2]}', more => 0 });
ok(!$f->is_ready, 'pending body: the app waits for it');
is(scalar @sent, 0, 'pending body: nothing sent yet');
$first->done({ type => 'http.request', body => '{"got":', more => 1 });
ok($f->is_done, 'pending body: done once both pieces arrived');
is(response(), '200 {"got":{"got":[1,2]}}', 'pending body: the handler saw the whole body');

# The whole body in one event, but more than the limit: 413.
$f = run_app({ method => 'POST', path => '/echo' }, { type => 'http.request', body => 'x' x 101, more => 0 });
is(response(), '413 Payload Too Large', 'a body over max_body_size is 413');
# A declared length over the limit is refused before the body is asked for.
$f = run_app({ method => 'POST', path => '/echo', headers => [ [ 'content-length', 500 ] ] });
is(response(), '413 Payload Too Large', 'a declared Content-Length over the limit is 413');
is($receives, 0, 'and $receive was not called');

# The server holds the response start back (backpressure): the body follows once it is taken.
$send_answer = Future->new;
my $held = $send_answer;
$f = run_app({}, { type => 'http.request', body => '', more => 0 });
is(scalar @sent, 1, 'held start: only the start is sent');
ok(!$f->is_ready, 'held start: the app waits');
$send_answer = undef;
$held->done;
ok($f->is_done, 'held start: done once the start is taken');
is(response(), '200 Hello, World!', 'held start: then the body');

# An async handler that waits on something.
$gate = Future->new;
$f = run_app({ path => '/later' }, { type => 'http.request', body => '', more => 0 });
ok(!$f->is_ready, 'pending handler: the app waits for it');
$gate->done('now');
ok($f->is_done, 'pending handler: done when the handler is');
is(response(), '200 later now', 'pending handler: its response');

# Errors.
my @warnings;
{
    local $SIG{__WARN__} = sub { push @warnings, @_ };
    $f = run_app({ path => '/die' }, { type => 'http.request', body => '', more => 0 });
    is(response(), '500 Internal Server Error', 'a handler that dies is a 500');
    like("@warnings", qr/broken/, 'and the error is logged');
    @warnings = ();
    $f = run_app({ path => '/gone' }, { type => 'http.request', body => '', more => 0 });
    is(response(), '410 Gone: moved on', '$c->error(410, ...) from a plain handler');
    is("@warnings", '', 'an abort is not logged as an error');
    $f = run_app({ path => '/silent' }, { type => 'http.request', body => '', more => 0 });
    is(response(), '500 Internal Server Error', 'a handler that sends nothing is a 500');
    like("@warnings", qr{returned without sending a response}, 'and that is logged');
    @warnings = ();
    $f = run_app({ path => '/die-after-send' }, { type => 'http.request', body => '', more => 0 });
    ok($f->is_done, 'dying after the response: the app still finishes');
    is(response(), '200 sent', 'dying after the response: the response stands');
    like("@warnings", qr/after/, 'and the error is logged');
}

# An after hook turns the fast path off; it still runs, after the response.
$app->hook(after => sub ($c) { push @after, $c->path });
$f = run_app({}, { type => 'http.request', body => '', more => 0 });
is(response(), '200 Hello, World!', 'with an after hook: the response');
is_deeply(\@after, ['/'], 'the after hook ran');

# Hooks and middleware that return nothing (a bare `return`) are fine too.
my @order;
$app->hook(before => sub ($c) { push @order, 'before'; return });
$app->middleware(note => sub ($c, $next) { push @order, 'mw'; $next->(); return });
$app->get('/chained' => ['note'], sub ($c) { push @order, 'handler'; $c->text('chained'); return });
{
    my @warnings;
    local $SIG{__WARN__} = sub { push @warnings, @_ };
    $f = run_app({ path => '/chained' }, { type => 'http.request', body => '', more => 0 });
    is(response(), '200 chained', 'a before hook and middleware returning nothing');
    is_deeply(\@order, [qw(before mw handler)], 'all ran, in order');
    is("@warnings", '', 'without errors');
}

# Not an http scope the app knows: a failed Future, as from an async sub.
$f = $pagi->({ type => 'telepathy' }, sub { Future->done({}) }, sub { Future->done });
ok($f->is_failed, 'an unknown scope type fails the app Future');
like(scalar $f->failure, qr/Unsupported scope type 'telepathy'/, 'naming the type');

alarm 0;
done_testing;
