package PAGI::Test::Events;
# Calls a PAGI app in this process with a hand-built scope and collects
# what it sends: for middleware tests that need no socket.
use strict;
use warnings;

use parent 'Exporter';
use Future;
use Future::AsyncAwait;

our @EXPORT_OK = qw(http_scope call_app response_of);

sub import {
    my $class = shift;
    # Every test file is bounded in time, whatever happens inside it.
    alarm($ENV{PAGI_TEST_TIMEOUT} || 120);
    $class->export_to_level(1, $class, @_);
}

# http_scope(%keys) → a scope like the server's; `headers` may be a flat list.
sub http_scope {
    my (%k) = @_;
    my $headers = delete $k{headers} // [];
    $headers = [ map { [ $headers->[2 * $_], $headers->[2 * $_ + 1] ] } 0 .. $#$headers / 2 ]
        if @$headers && !ref $headers->[0];
    my $path = $k{path} // '/';
    return {
        type => 'http', pagi => { version => '0.3', spec_version => '0.3' }, http_version => '1.1',
        method => 'GET', scheme => 'http', path => $path, raw_path => $path, query_string => '',
        root_path => '', client => [ '127.0.0.1', 40000 ], server => [ '127.0.0.1', 5000 ],
        extensions => {}, state => {},
        %k, headers => $headers,
    };
}

# call_app($app, $scope, body => [chunks]) → { events => [...], error => $@ or undef,
# received => n }. The body chunks are the http.request events; after them
# http.disconnect.
sub call_app {
    my ($app, $scope, %o) = @_;
    my @body = @{ $o{body} // [''] };
    my (@events, $received);
    my $receive = sub {
        $received++;
        return Future->done({ type => 'http.disconnect' }) unless @body;
        my $chunk = shift @body;
        return Future->done({ type => 'http.request', body => $chunk, more => @body ? 1 : 0 });
    };
    my $send = sub { push @events, $_[0]; Future->done };
    my $f = $app->($scope, $receive, $send);
    my $error;
    eval { $f->get; 1 } or $error = $@;
    return { events => \@events, error => $error, received => $received // 0 };
}

# response_of($result) → { status, headers => [pairs], header => {lc name => last value}, body }.
sub response_of {
    my ($r) = @_;
    my ($start) = grep { $_->{type} eq 'http.response.start' } @{ $r->{events} };
    return undef unless $start;
    my $body = join '', map { $_->{body} // '' } grep { $_->{type} eq 'http.response.body' } @{ $r->{events} };
    my %h = map { lc($_->[0]) => $_->[1] } @{ $start->{headers} || [] };
    return { status => $start->{status}, headers => $start->{headers} || [], header => \%h, body => $body };
}

1;
