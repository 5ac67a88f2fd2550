use strict;
use warnings;
use Test::More;
use Future::AsyncAwait;
use IO::Async::Loop;
use PAGI::Test::Client;

alarm 60;

my (@scopes, @received);
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    die "unsupported scope type '$scope->{type}'\n" unless $scope->{type} eq 'sse';
    push @scopes, $scope;
    my $request = await $receive->();
    push @received, $request;
    my $path = $scope->{path};
    if ($path eq '/missing') {
        await $send->({ type => 'sse.http.response.start', status => 404, headers => [ [ 'content-type', 'text/plain' ] ] });
        return await $send->({ type => 'sse.http.response.body', body => 'no such feed' });
    }
    die "feed exploded\n" if $path eq '/die';
    if ($path eq '/bad') {
        await $send->({ type => 'sse.start' });
        return await $send->({ type => 'sse.send', data => 'x', event => "two\nlines" });
    }
    if ($path eq '/early') {
        return await $send->({ type => 'sse.send', data => 'x' });
    }
    await $send->({ type => 'sse.start', status => 200, headers => [ [ 'x-feed', 'yes' ] ] });
    if ($path eq '/finite') {
        my ($last) = map { $_->[1] } grep { $_->[0] eq 'last-event-id' } @{ $scope->{headers} };
        await $send->({ type => 'sse.comment', comment => 'hello' });
        await $send->({ type => 'sse.send', event => 'tick', data => "line 1\r\nline 2", id => $last + 1, retry => 500 });
        await IO::Async::Loop->new->delay_future(after => 0.05);
        await $send->({ type => 'sse.send', data => '' });
        await $send->({ type => 'sse.close', reason => 'finished' });
        await $send->({ type => 'sse.close' });    # a second one is a no-op
        await $send->({ type => 'sse.send', data => 'after close' }) if $scope->{query_string} eq 'more';
        return;
    }
    # /forever: keeps sending until the client goes away.
    await $send->({ type => 'sse.keepalive', interval => 15 });
    await $send->({ type => 'sse.send', data => 'first' });
    push @received, await $receive->();
};

my $client = PAGI::Test::Client->new(app => $app);

subtest 'scope and events' => sub {
    my $sse = $client->sse('/finite?x=1', last_event_id => '41');
    isa_ok $sse, 'PAGI::Test::Client::SSE';
    is $sse->status, 200, 'status';
    is $sse->header('X-Feed'), 'yes', 'headers';
    my $s = $scopes[-1];
    is $s->{type}, 'sse', 'type sse';
    is $s->{method}, 'GET', 'method GET';
    is $s->{scheme}, 'http', 'scheme';
    is $s->{path}, '/finite', 'path';
    is $s->{query_string}, 'x=1', 'query_string';
    my %h = map { @$_ } @{ $s->{headers} };
    is $h{accept}, 'text/event-stream', 'Accept: text/event-stream';
    is $h{'last-event-id'}, 41, 'Last-Event-ID';
    is_deeply $received[-1], { type => 'sse.request', body => '', more => 0 }, 'one sse.request';
    is_deeply $sse->next_event, { event => 'tick', data => "line 1\nline 2", id => 42, retry => 500 },
        'next_event: the fields, data lines joined as an EventSource does';
    is_deeply $sse->next_event(timeout => 5), { event => undef, data => '', id => undef, retry => undef }, 'an event after a timer';
    is $sse->next_event, undef, 'undef once the app ended the stream';
    ok $sse->closed, 'closed after sse.close';
    is_deeply [ $sse->comments ], ['hello'], 'comments';
    $sse->close;
};

subtest 'client close and POST body' => sub {
    my $sse = $client->sse('/forever', method => 'POST', json => { topics => ['a'] });
    is $scopes[-1]{method}, 'POST', 'any method';
    is_deeply $received[-1], { type => 'sse.request', body => '{"topics":["a"]}', more => 0 }, 'the body in sse.request';
    is $sse->next_event->{data}, 'first', 'an event';
    is_deeply $sse->keepalive, { interval => 15, comment => '' }, 'keepalive settings';
    eval { $sse->next_event(timeout => 0.2) };
    like $@, qr{sse /forever: next_event: no event from the app within 0\.2s}, 'next_event times out clearly';
    $sse->close;
    is_deeply $received[-1], { type => 'sse.disconnect', reason => 'client_closed' }, 'close delivers sse.disconnect';
    ok $sse->closed, 'closed';
};

subtest 'decline' => sub {
    my $res = $client->sse('/missing');
    isa_ok $res, 'PAGI::Test::Client::Response', 'a declined stream';
    is $res->status, 404, 'status';
    is $res->text, 'no such feed', 'body';
    is $res->header('content-type'), 'text/plain', 'headers';
};

subtest 'errors' => sub {
    eval { $client->sse('/die') };
    like $@, qr{sse /die: the app died: feed exploded}, 'an app dying before sse.start croaks';
    is(PAGI::Test::Client->new(app => $app, raise_app_errors => 0)->sse('/die')->status, 500, '... or is a 500');
    eval { $client->sse('/bad')->next_event };
    like $@, qr/sse\.send: 'event' must not contain CR or LF/, 'a bad event croaks, naming the field';
    eval { my $sse = $client->sse('/finite?more', last_event_id => 1); 1 while defined $sse->next_event(timeout => 5) };
    like $@, qr/cannot send 'sse\.send' after sse\.close/, 'a send after sse.close croaks';
    eval { $client->sse('/early') };
    like $@, qr/sse\.send: sent before sse\.start/, 'an event before sse.start croaks';
    my $hangs = async sub { my ($scope, $receive) = @_; die "no\n" unless $scope->{type} eq 'sse'; await $receive->(); await $receive->() };
    eval { PAGI::Test::Client->new(app => $hangs, timeout => 0.3)->sse('/wait') };
    like $@, qr{sse /wait: the app neither started the stream \(sse\.start\) nor declined it within 0\.3s}, 'no answer times out';
};

done_testing;
